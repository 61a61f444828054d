/* Minimal CO-RE views of the kernel structures nsgroup reads.
 *
 * Only the fields used are declared; preserve_access_index makes libbpf/aya
 * relocate every access against the running kernel's BTF, so the layout here
 * never has to match the kernel's.
 */
#ifndef NSGROUP_KERNEL_H
#define NSGROUP_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;
typedef __u8 u8;
typedef __u32 u32;
typedef __u64 u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum { BPF_ANY = 0 };

#define __core __attribute__((preserve_access_index))

struct ns_common { unsigned int inum; } __core;
struct uts_namespace { struct ns_common ns; } __core;
struct ipc_namespace { struct ns_common ns; } __core;
struct mnt_namespace { struct ns_common ns; } __core;
struct pid_namespace { struct ns_common ns; } __core;
struct net { struct ns_common ns; } __core;
struct time_namespace { struct ns_common ns; } __core;
struct cgroup_namespace { struct ns_common ns; } __core;

struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct pid_namespace *pid_ns_for_children;
	struct net *net_ns;
	struct time_namespace *time_ns;
	struct time_namespace *time_ns_for_children;
	struct cgroup_namespace *cgroup_ns;
} __core;

typedef struct { __u32 val; } kuid_t;
struct uid_gid_extent { __u32 first; __u32 lower_first; __u32 count; } __core;
struct uid_gid_map {
	__u32 nr_extents;
	union {
		struct uid_gid_extent extent[5];
		struct {
			struct uid_gid_extent *forward; /* beyond 5 extents: sorted by first */
			struct uid_gid_extent *reverse;
		};
	};
} __core;
struct user_namespace {
	struct uid_gid_map uid_map;
	struct user_namespace *parent;
	kuid_t owner;
	struct ns_common ns;
} __core;
struct cred { kuid_t uid; struct user_namespace *user_ns; } __core;
struct upid { int nr; struct pid_namespace *ns; } __core;
struct pid { unsigned int level; struct upid numbers[1]; } __core;
struct list_head { struct list_head *next, *prev; } __core;
struct kernfs_node { __u64 id; } __core;
struct cgroup_root { int hierarchy_id; } __core;
struct cgroup {
	struct kernfs_node *kn;
	int level;
	struct cgroup_root *root;
	struct cgroup *ancestors[];
} __core;
struct cgrp_cset_link { struct cgroup *cgrp; struct list_head cgrp_link; } __core;
struct css_set { struct list_head cgrp_links; } __core;

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	__u64 start_time;
	__u64 start_boottime;
	struct task_struct *real_parent;
	struct nsproxy *nsproxy;
	const struct cred *real_cred;
	struct pid *thread_pid;
	struct css_set *cgroups;
	char comm[16];
} __core;

struct seq_file;
struct bpf_iter_meta { struct seq_file *seq; } __core;
struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; } __core;

#define PF_KTHREAD 0x00200000

#endif
