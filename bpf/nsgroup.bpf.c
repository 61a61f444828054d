// SPDX-License-Identifier: GPL-2.0
/* nsgroup's kernel side: notice every task that enters a new namespace set.
 *
 *   tp_btf/sched_process_fork   a child whose set differs from its parent's
 *                               (clone/clone3 with CLONE_NEW*, the first fork
 *                               after unshare(CLONE_NEWPID/NEWTIME)), or any
 *                               child of a task still waiting to be placed
 *   fentry/fexit ksys_unshare, __x64_sys_setns, or where the kernel refuses
 *   those, syscalls:sys_{enter,exit}_unshare, _setns
 *                               a caller whose set changed
 *   tp_btf/sched_process_exec   a pending task settled (ends setns coalescing)
 *   tp_btf/sched_process_exit   a task living in a node (or not placed yet) exited
 *   iter/task                   a snapshot of every task in scope (reconcile)
 *
 * With watch_sets (hooks = "no-syscall") no syscall is hooked: fork and exec
 * compare the task's set with the one it was last seen with (`seen`, seeded
 * by the snapshot), so an unshare()/setns() caller is reported at its next
 * fork (as UNSHARE) or execve() (as EXEC), or by the next snapshot.
 *
 * Only tasks whose cgroup in the tracked hierarchy lies below the tracked root
 * are reported; kernel threads never are.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "nsgroup.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before the programs are loaded. */
const volatile __u32 hierarchy_id = 0;   /* 0 is cgroup2 */
const volatile __u64 root_cgroup_id = 0; /* the tracked subtree's root */
const volatile __u32 root_level = 0;
const volatile __u32 watch_sets = 0;     /* 1: no syscall hooks, see above */
const volatile __u32 base_userns = 0;    /* the daemon's user namespace (inode) */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* the loader overrides this */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NSG_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Tasks that entered a set and that the daemon has not placed yet (tid -> 1).
 * Their children are reported too, whatever their set: the fork-mid-move race. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} pending SEC(".maps");

/* Tasks living in a node (tid -> 1): their exits are reported. The daemon
 * adds the tasks it places; children of tracked tasks are tracked. LRU: a lost
 * entry costs a delayed cleanup only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, __u8);
} tracked SEC(".maps");

/* The flags for bpf_ringbuf_submit(), set by the daemon: under a high rate it
 * looks at the ring on a timer and asks for BPF_RB_NO_WAKEUP, so that the
 * traced tasks pay for no wakeup (an irq_work and a remote wakeup each). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ring_flags SEC(".maps");

struct nsset { __u32 ns[NSG_NS_COUNT]; };

/* The set a task had when it entered unshare()/setns(), by tid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct nsset);
} syscall_entry SEC(".maps");

/* The set each task in scope was last seen with (watch_sets only; the
 * loader shrinks the map to one entry otherwise). An evicted or missing
 * entry delays a report to the next snapshot, which seeds them all. */
struct seen {
	__u64 start_ns;   /* tells a reused tid apart */
	__u64 nsproxy;    /* the pointers the set is read from: unchanged */
	__u64 user_ns;    /* pointers, unchanged set (the cheap test) */
	struct nsset set;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct seen);
} seen SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline struct pid_namespace *active_pid_ns(struct task_struct *t)
{
	struct pid *pid = BPF_CORE_READ(t, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct pid_namespace *ns = NULL;
	bpf_core_read(&ns, sizeof(ns), &pid->numbers[level].ns);
	return ns;
}

static __always_inline void read_set(struct task_struct *t, struct nsset *s)
{
	struct nsproxy *p = BPF_CORE_READ(t, nsproxy);
	if (!p) { /* exiting task: its namespaces are gone */
		__builtin_memset(s, 0, sizeof(*s));
		return;
	}
	s->ns[NSG_NS_CGROUP] = BPF_CORE_READ(p, cgroup_ns, ns.inum);
	s->ns[NSG_NS_IPC] = BPF_CORE_READ(p, ipc_ns, ns.inum);
	s->ns[NSG_NS_MNT] = BPF_CORE_READ(p, mnt_ns, ns.inum);
	s->ns[NSG_NS_NET] = BPF_CORE_READ(p, net_ns, ns.inum);
	s->ns[NSG_NS_PID] = BPF_CORE_READ(active_pid_ns(t), ns.inum);
	s->ns[NSG_NS_PID_FOR_CHILDREN] = BPF_CORE_READ(p, pid_ns_for_children, ns.inum);
	s->ns[NSG_NS_TIME] = BPF_CORE_READ(p, time_ns, ns.inum);
	s->ns[NSG_NS_TIME_FOR_CHILDREN] = BPF_CORE_READ(p, time_ns_for_children, ns.inum);
	s->ns[NSG_NS_USER] = BPF_CORE_READ(t, real_cred, user_ns, ns.inum);
	s->ns[NSG_NS_UTS] = BPF_CORE_READ(p, uts_ns, ns.inum);
}

static __always_inline bool same_set(const struct nsset *a, const struct nsset *b)
{
	for (int i = 0; i < NSG_NS_COUNT; i++)
		if (a->ns[i] != b->ns[i])
			return false;
	return true;
}

/* Before Linux 6.0, struct cgroup held its ancestors' ids (kn->id), not
 * pointers to them. */
struct cgroup___pre60 { __u64 ancestor_ids[0]; } __attribute__((preserve_access_index));

/* The most hierarchies (mounted or not) the link walk looks through. */
#define MAX_HIERARCHIES 1024

/* The task's cgroup in the tracked hierarchy, if it lies below the tracked
 * root; 0 otherwise. Walks the css_set's links (one per hierarchy). */
static __always_inline __u64 scoped_cgroup(struct task_struct *t)
{
	struct css_set *cset = BPF_CORE_READ(t, cgroups);
	struct list_head *head = (struct list_head *)((char *)cset +
		bpf_core_field_offset(struct css_set, cgrp_links));
	struct list_head *pos = BPF_CORE_READ(cset, cgrp_links.next);
	__u64 link_off = bpf_core_field_offset(struct cgrp_cset_link, cgrp_link);
	struct cgroup *cg = NULL;

#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_HIERARCHIES && pos && pos != head; i++) {
		struct cgrp_cset_link *link = (void *)((char *)pos - link_off);
		struct cgroup *c = BPF_CORE_READ(link, cgrp);
		if (BPF_CORE_READ(c, root, hierarchy_id) == (int)hierarchy_id) {
			cg = c;
			break;
		}
		pos = BPF_CORE_READ(pos, next);
	}
	if (!cg)
		return 0;
	int level = BPF_CORE_READ(cg, level);
	if (level < (int)root_level)
		return 0;
	__u64 root_id = 0;
	if (bpf_core_field_exists(struct cgroup, ancestors)) {
		struct cgroup *anc = NULL;
		bpf_core_read(&anc, sizeof(anc), &cg->ancestors[root_level]);
		root_id = BPF_CORE_READ(anc, kn, id);
	} else {
		struct cgroup___pre60 *old = (void *)cg;
		bpf_core_read(&root_id, sizeof(root_id), &old->ancestor_ids[root_level]);
	}
	if (root_id != root_cgroup_id)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

/* How deep user namespaces nest (the kernel's limit is 32). */
#define USERNS_MAX_DEPTH 33

/* The kernel uid that user namespace `ns` maps its lowest inner uid to
 * (0 while unmapped). Bounded: at most 5 extents are stored inline; beyond
 * that the kernel keeps them sorted by inner uid. */
static __always_inline __u32 range_of(struct user_namespace *ns)
{
	__u32 n = BPF_CORE_READ(ns, uid_map.nr_extents);
	if (n > 5) {
		struct uid_gid_extent *sorted = BPF_CORE_READ(ns, uid_map.forward);
		return BPF_CORE_READ(sorted, lower_first);
	}
	__u32 lowest = ~0u, lower = 0;
	for (int i = 0; i < 5 && i < n; i++) {
		__u32 first = 0, low = 0;
		bpf_core_read(&first, sizeof(first), &ns->uid_map.extent[i].first);
		bpf_core_read(&low, sizeof(low), &ns->uid_map.extent[i].lower_first);
		if (first < lowest) {
			lowest = first;
			lower = low;
		}
	}
	return lower;
}

/* Who owns `t`'s set (docs/semantics.md §13 "Owners"; src/sys/owner.rs is
 * the /proc side): the owner of its outermost user namespace below the
 * daemon's (the kernel uid that created it), else its real uid. A user's
 * subordinate uids live in user namespaces that user owns, so they are that
 * user. A namespace root made for another range (an unprivileged container
 * root started) belongs to that range: to the uid its lowest inner uid maps
 * to. Bounded: one read per nesting level. */
static __always_inline __u32 owner_of(struct task_struct *t)
{
	__u32 uid = BPF_CORE_READ(t, real_cred, uid.val);
	struct user_namespace *ns = BPF_CORE_READ(t, real_cred, user_ns);
	struct user_namespace *below = NULL;
	for (int i = 0; i < USERNS_MAX_DEPTH && ns; i++) {
		if (BPF_CORE_READ(ns, ns.inum) == base_userns) {
			if (!below)
				return uid;
			__u32 owner = BPF_CORE_READ(below, owner.val);
			return owner ? owner : range_of(below);
		}
		below = ns;
		ns = BPF_CORE_READ(ns, parent);
	}
	/* Not below the daemon's user namespace: its own uid. */
	return uid;
}

static __always_inline void emit(__u32 kind, struct task_struct *t, __u64 cgroup_id,
				 __u32 ptid, const struct nsset *now, const struct nsset *prev)
{
	struct nsg_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(NSG_STAT_DROPPED);
		return;
	}
	e->ktime_ns = bpf_ktime_get_ns();
	e->start_ns = BPF_CORE_READ(t, start_boottime);
	e->cgroup_id = cgroup_id;
	e->kind = kind;
	e->tid = BPF_CORE_READ(t, pid);
	e->tgid = BPF_CORE_READ(t, tgid);
	e->ptid = ptid;
	__builtin_memcpy(e->ns, now->ns, sizeof(e->ns));
	__builtin_memcpy(e->prev_ns, prev->ns, sizeof(e->prev_ns));
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
	e->uid = BPF_CORE_READ(t, real_cred, uid.val);
	e->owner = owner_of(t);
	__u32 zero = 0;
	__u64 *flags = bpf_map_lookup_elem(&ring_flags, &zero);
	bpf_ringbuf_submit(e, flags ? *flags : 0);
	count(NSG_STAT_EMITTED);
}

static const __u8 one = 1;

/* Records the set `t` is in now (watch_sets). */
static __always_inline void remember(struct task_struct *t, __u32 tid, const struct nsset *s)
{
	struct seen v = {
		.start_ns = BPF_CORE_READ(t, start_boottime),
		.nsproxy = (__u64)BPF_CORE_READ(t, nsproxy),
		.user_ns = (__u64)BPF_CORE_READ(t, real_cred, user_ns),
		.set = *s,
	};
	bpf_map_update_elem(&seen, &tid, &v, BPF_ANY);
}

/* watch_sets: whether `t` is in scope and in another set than it was last
 * seen with; then reports it as `kind` (prev: the set it was seen with),
 * marks it pending and remembers its set. A task never seen is not
 * reported; with `seed`, its set is remembered if it is in scope (a task
 * that came into scope by a move, or whose entry was evicted). */
static __always_inline bool report_if_moved(struct task_struct *t, __u32 tid, __u32 kind, bool seed)
{
	struct seen *v = bpf_map_lookup_elem(&seen, &tid);
	if (v && v->start_ns != BPF_CORE_READ(t, start_boottime)) { /* an exit not seen */
		bpf_map_delete_elem(&seen, &tid);
		v = NULL;
	}
	if (!v) {
		if (seed && scoped_cgroup(t)) {
			struct nsset s;
			read_set(t, &s);
			remember(t, tid, &s);
		}
		return false;
	}
	__u64 nsproxy = (__u64)BPF_CORE_READ(t, nsproxy);
	__u64 user_ns = (__u64)BPF_CORE_READ(t, real_cred, user_ns);
	if (v->nsproxy == nsproxy && v->user_ns == user_ns)
		return false;
	struct nsset was = v->set, now;
	read_set(t, &now);
	v->nsproxy = nsproxy;
	v->user_ns = user_ns;
	v->set = now;
	if (same_set(&was, &now))
		return false;
	__u64 cg = scoped_cgroup(t);
	if (!cg)
		return false;
	bpf_map_update_elem(&pending, &tid, &one, BPF_ANY);
	emit(kind, t, cg, 0, &now, &was);
	return true;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptid = BPF_CORE_READ(parent, pid);
	__u32 ctid = BPF_CORE_READ(child, pid);
	/* No syscall hook: a parent that moved since it was last seen is
	 * reported first, and its children with it (it is pending). */
	if (watch_sets)
		report_if_moved(parent, ptid, NSG_EV_UNSHARE, false);
	bool parent_pending = bpf_map_lookup_elem(&pending, &ptid) != NULL;

	/* Cheap test first: same nsproxy, user namespace and pid namespace
	 * means the same set (the fork storm without namespaces stops here). */
	if (!parent_pending &&
	    BPF_CORE_READ(parent, nsproxy) == BPF_CORE_READ(child, nsproxy) &&
	    BPF_CORE_READ(parent, real_cred, user_ns) == BPF_CORE_READ(child, real_cred, user_ns) &&
	    active_pid_ns(parent) == active_pid_ns(child)) {
		if (bpf_map_lookup_elem(&tracked, &ptid))
			bpf_map_update_elem(&tracked, &ctid, &one, BPF_ANY);
		/* Same pointers, same set: the child inherits the parent's entry. */
		struct seen *v = watch_sets ? bpf_map_lookup_elem(&seen, &ptid) : NULL;
		if (v) {
			struct seen c = *v;
			c.start_ns = BPF_CORE_READ(child, start_boottime);
			bpf_map_update_elem(&seen, &ctid, &c, BPF_ANY);
		}
		return 0;
	}
	if (BPF_CORE_READ(child, flags) & PF_KTHREAD)
		return 0;
	__u64 cg = scoped_cgroup(child);
	if (!cg)
		return 0;

	struct nsset p, c;
	read_set(parent, &p);
	read_set(child, &c);
	if (watch_sets)
		remember(child, ctid, &c);
	if (!parent_pending && same_set(&p, &c)) {
		if (bpf_map_lookup_elem(&tracked, &ptid))
			bpf_map_update_elem(&tracked, &ctid, &one, BPF_ANY);
		return 0;
	}
	bpf_map_update_elem(&pending, &ctid, &one, BPF_ANY);
	if (bpf_map_lookup_elem(&tracked, &ptid))
		bpf_map_update_elem(&tracked, &ctid, &one, BPF_ANY);
	emit(NSG_EV_FORK, child, cg, ptid, &c, &p);
	return 0;
}

static __always_inline int on_syscall_enter(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 tid = BPF_CORE_READ(t, pid);
	struct nsset s;
	read_set(t, &s);
	bpf_map_update_elem(&syscall_entry, &tid, &s, BPF_ANY);
	return 0;
}

static __always_inline int on_syscall_exit(__u32 kind, long ret)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 tid = BPF_CORE_READ(t, pid);
	struct nsset *before = bpf_map_lookup_elem(&syscall_entry, &tid);
	if (!before)
		return 0;
	struct nsset prev = *before;
	bpf_map_delete_elem(&syscall_entry, &tid);
	if (ret != 0)
		return 0;
	struct nsset now;
	read_set(t, &now);
	if (same_set(&prev, &now))
		return 0;
	__u64 cg = scoped_cgroup(t);
	if (!cg)
		return 0;
	bpf_map_update_elem(&pending, &tid, &one, BPF_ANY);
	emit(kind, t, cg, 0, &now, &prev);
	return 0;
}

/* The layout of the syscalls:sys_exit_* tracepoint records. */
struct sys_exit_args {
	__u64 common;
	long id;
	long ret;
};

SEC("tracepoint/syscalls/sys_enter_unshare")
int on_unshare_enter(void *ctx) { return on_syscall_enter(); }

SEC("tracepoint/syscalls/sys_exit_unshare")
int on_unshare_exit(struct sys_exit_args *ctx) { return on_syscall_exit(NSG_EV_UNSHARE, ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_setns")
int on_setns_enter(void *ctx) { return on_syscall_enter(); }

SEC("tracepoint/syscalls/sys_exit_setns")
int on_setns_exit(struct sys_exit_args *ctx) { return on_syscall_exit(NSG_EV_SETNS, ctx->ret); }

/* Preferred where the kernel allows them: fentry/fexit on the syscalls'
 * kernel functions. Unlike the syscalls: tracepoints they leave every other
 * syscall of every task on the fast path. The loader falls back to the
 * tracepoints when the kernel refuses them. */
SEC("fentry/ksys_unshare")
int on_unshare_fentry(void *ctx) { return on_syscall_enter(); }

SEC("fexit/ksys_unshare")
int BPF_PROG(on_unshare_fexit, unsigned long flags, int ret) { return on_syscall_exit(NSG_EV_UNSHARE, ret); }

SEC("fentry/__x64_sys_setns")
int on_setns_fentry(void *ctx) { return on_syscall_enter(); }

SEC("fexit/__x64_sys_setns")
int BPF_PROG(on_setns_fexit, void *regs, long ret) { return on_syscall_exit(NSG_EV_SETNS, ret); }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *t, int old_pid, void *bprm)
{
	__u32 tid = BPF_CORE_READ(t, pid);
	if (watch_sets && report_if_moved(t, tid, NSG_EV_EXEC, true))
		return 0;
	if (!bpf_map_lookup_elem(&pending, &tid))
		return 0;
	__u64 cg = scoped_cgroup(t);
	if (!cg)
		return 0;
	struct nsset now;
	read_set(t, &now);
	emit(NSG_EV_EXEC, t, cg, 0, &now, &now);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *t)
{
	__u32 tid = BPF_CORE_READ(t, pid);
	if (watch_sets)
		bpf_map_delete_elem(&seen, &tid);
	/* Pending until the daemon has placed it, tracked from then on: an
	 * exit in between is never missed. */
	if (!bpf_map_lookup_elem(&tracked, &tid) && !bpf_map_lookup_elem(&pending, &tid))
		return 0;
	bpf_map_delete_elem(&tracked, &tid);
	bpf_map_delete_elem(&pending, &tid);
	struct nsset none = {};
	emit(NSG_EV_EXIT, t, scoped_cgroup(t), 0, &none, &none);
	return 0;
}

SEC("iter/task")
int snapshot(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *t = ctx->task;
	if (!t || (BPF_CORE_READ(t, flags) & PF_KTHREAD))
		return 0;
	__u64 cg = scoped_cgroup(t);
	if (!cg)
		return 0;
	struct nsset s;
	read_set(t, &s);
	if (watch_sets)
		remember(t, BPF_CORE_READ(t, pid), &s);
	struct nsg_task rec = {};
	rec.start_ns = BPF_CORE_READ(t, start_boottime);
	rec.cgroup_id = cg;
	rec.tid = BPF_CORE_READ(t, pid);
	rec.tgid = BPF_CORE_READ(t, tgid);
	rec.parent = rec.tid == rec.tgid ? BPF_CORE_READ(t, real_parent, tgid) : rec.tgid;
	rec.uid = BPF_CORE_READ(t, real_cred, uid.val);
	rec.owner = owner_of(t);
	__builtin_memcpy(rec.ns, s.ns, sizeof(rec.ns));
	BPF_CORE_READ_STR_INTO(&rec.comm, t, comm);
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}
