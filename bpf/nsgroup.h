/* The wire format between the BPF programs and the daemon.
 * Mirrored by src/bpf/event.rs (#[repr(C)]); a unit test checks the size.
 */
#ifndef NSGROUP_EVENT_H
#define NSGROUP_EVENT_H

/* Namespace slots, in the order of /proc/<pid>/ns names sorted by name. */
#define NSG_NS_CGROUP 0
#define NSG_NS_IPC 1
#define NSG_NS_MNT 2
#define NSG_NS_NET 3
#define NSG_NS_PID 4
#define NSG_NS_PID_FOR_CHILDREN 5
#define NSG_NS_TIME 6
#define NSG_NS_TIME_FOR_CHILDREN 7
#define NSG_NS_USER 8
#define NSG_NS_UTS 9
#define NSG_NS_COUNT 10

/* Event kinds. */
#define NSG_EV_FORK 1    /* a new task whose set differs from its parent's (or whose parent is pending) */
#define NSG_EV_UNSHARE 2 /* unshare() changed the caller's set */
#define NSG_EV_SETNS 3   /* setns() changed the caller's set */
#define NSG_EV_EXEC 4    /* a pending task called execve(): its set is settled */
#define NSG_EV_EXIT 5    /* a task that lives in a node exited */

/* Indices into the `stats` array map. */
#define NSG_STAT_DROPPED 0 /* ring buffer reservations that failed */
#define NSG_STAT_EMITTED 1 /* events submitted */
#define NSG_STAT_COUNT 2

struct nsg_event {
	__u64 ktime_ns;   /* bpf_ktime_get_ns() when emitted */
	__u64 start_ns;   /* task->start_boottime: tells a reused tid apart (/proc's start time, in ns) */
	__u64 cgroup_id;  /* the task's cgroup in the tracked hierarchy (directory inode) */
	__u32 kind;       /* NSG_EV_* */
	__u32 tid;
	__u32 tgid;
	__u32 ptid;       /* for FORK: the parent thread's tid, else 0 */
	__u32 ns[NSG_NS_COUNT];      /* the set the task is in now */
	__u32 prev_ns[NSG_NS_COUNT]; /* the set it was in before (FORK: the parent's) */
	char comm[16];
	__u32 uid;        /* the task's real uid (in the initial user namespace) */
	__u32 owner;      /* who owns its set: see owner_of() */
};

/* One task of the start-up/overflow snapshot (iter/task), in scope only. */
struct nsg_task {
	__u64 start_ns;  /* task->start_boottime */
	__u64 cgroup_id; /* its cgroup in the tracked hierarchy */
	__u32 tid;
	__u32 tgid;
	__u32 parent;    /* the leader for a thread, else the parent process */
	__u32 uid;       /* the task's real uid (in the initial user namespace) */
	__u32 ns[NSG_NS_COUNT];
	char comm[16];
	__u32 owner;     /* who owns its set: see owner_of() */
	__u32 pad;
};

#endif
