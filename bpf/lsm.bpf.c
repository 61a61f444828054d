// SPDX-License-Identifier: GPL-2.0
/* nsgroup's strict mode: the API's permission model (the kernel's 2007 ns
 * subsystem's ns_can_attach and ns_create) enforced on direct writes to the
 * tracked hierarchy, where the API cannot see them.
 *
 * No LSM hook sees a cgroup migration with its task (there is no
 * security_cgroup_attach), so the write itself is judged:
 *
 *   lsm/file_permission   a write (MAY_WRITE) to `cgroup.procs`, `tasks` or
 *                         `cgroup.threads` of a cgroup in the tracked subtree.
 *                         The pid written is read from the writer's buffer
 *                         (the syscall's arguments in its pt_regs: write(2),
 *                         pwrite64(2), writev(2)/pwritev(2)/pwritev2(2) with
 *                         one iovec) and parsed as the kernel does; the task
 *                         is looked up in the writer's pid namespace (the
 *                         namespace's pid IDR, walked as radix_tree_lookup
 *                         does). Anything it cannot read or parse the way the
 *                         kernel would is refused (fail closed): io_uring,
 *                         splice, several iovecs, hex/octal/signed numbers.
 *   lsm/inode_mkdir       a mkdir in the tracked subtree (ns_create).
 *
 * Rules, in the seed's order (docs/semantics.md, the permission table):
 *   another task: CAP_SYS_ADMIN (in the daemon's user namespace), and the
 *   destination at or below the writer's cgroup; then, for everyone: the
 *   destination holds no task, and the task's cgroup is the destination's
 *   parent. mkdir: CAP_SYS_ADMIN, below the writer's cgroup.
 * The daemon itself (its thread group) is exempt. Refusals are EPERM,
 * counted per rule in `strict_stats`.
 *
 * x86_64 only (the syscall numbers and pt_regs names).
 */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;
typedef _Bool bool;
#define true 1
#define false 0
typedef unsigned short umode_t;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

enum bpf_map_type { BPF_MAP_TYPE_ARRAY = 2 };

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define __core __attribute__((preserve_access_index))

struct super_block { unsigned long s_magic; } __core;
struct inode { struct super_block *i_sb; void *i_private; } __core;
struct qstr { const unsigned char *name; } __core;
struct dentry { struct qstr d_name; struct dentry *d_parent; struct inode *d_inode; } __core;
struct path { struct dentry *dentry; } __core;
struct file { struct path f_path; struct inode *f_inode; } __core;
struct kernfs_node { void *priv; } __core;
struct cgroup_root { int hierarchy_id; } __core;
struct cgroup {
	int level;
	int nr_populated_csets;
	struct cgroup_root *root;
	struct kernfs_node *kn;
	struct cgroup *ancestors[];
} __core;
struct kernfs_node___id { __u64 id; } __core;
struct list_head { struct list_head *next, *prev; } __core;
struct cgrp_cset_link { struct cgroup *cgrp; struct list_head cgrp_link; } __core;
struct css_set { struct list_head cgrp_links; } __core;
struct ns_common { unsigned int inum; } __core;
struct user_namespace { struct ns_common ns; } __core;
typedef struct { __u64 val; } kernel_cap_t;
struct cred { kernel_cap_t cap_effective; struct user_namespace *user_ns; } __core;
struct hlist_node { struct hlist_node *next; } __core;
struct hlist_head { struct hlist_node *first; } __core;
struct xarray { void *xa_head; } __core;
struct idr { struct xarray idr_rt; unsigned int idr_base; } __core;
struct pid_namespace { struct idr idr; } __core;
struct upid { int nr; struct pid_namespace *ns; } __core;
struct pid { unsigned int level; struct hlist_head tasks[4]; struct upid numbers[1]; } __core;
struct xa_node { unsigned char shift; void *slots[64]; } __core;
struct task_struct {
	int pid;
	int tgid;
	const struct cred *cred;
	struct css_set *cgroups;
	struct pid *thread_pid;
	struct hlist_node pid_links[4];
} __core;
struct pt_regs { unsigned long di, si, dx, orig_ax; } __core;
struct iovec { void *iov_base; unsigned long iov_len; } __core;

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader. */
const volatile __u32 hierarchy_id = 0;   /* 0 is cgroup2 */
const volatile __u64 root_cgroup_id = 0; /* the tracked subtree's root */
const volatile __u32 root_level = 0;
const volatile __u32 daemon_tgid = 0;
const volatile __u32 own_user_ns = 0;    /* CAP_SYS_ADMIN counts only here */

/* Refusals by rule (the order of nsg_rule), and passes: the counters of
 * src/policy/strict.rs (`COUNTED`), each named `R_` and the rule's name in
 * capitals. Its tests check this enum, and the order of the refuse() calls
 * in each program, against that table. */
enum nsg_rule {
	R_PASSED,
	R_ATTACH_OTHER_NEEDS_CAP_SYS_ADMIN,
	R_ATTACH_OTHER_BELOW_MOVER,
	R_ATTACH_EMPTY_ONLY,
	R_ATTACH_CHILD_ONLY,
	R_CREATE_NEEDS_CAP_SYS_ADMIN,
	R_CREATE_BELOW_CREATOR,
	R_UNREADABLE_WRITE, /* fail closed: a write whose pid could not be read as the kernel would */
	R_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, R_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} strict_stats SEC(".maps");

#define EPERM 1
#define MAY_WRITE 2
#define CGROUP_SUPER_MAGIC 0x27e0eb
#define CGROUP2_SUPER_MAGIC 0x63677270
#define CAP_SYS_ADMIN 21
#define MAX_HIERARCHIES 64
#define NR_WRITE 1
#define NR_PWRITE64 18
#define NR_WRITEV 20
#define NR_PWRITEV 296
#define NR_PWRITEV2 328

static __always_inline int refuse(__u32 rule)
{
	__u64 *v = bpf_map_lookup_elem(&strict_stats, &rule);
	if (v)
		__sync_fetch_and_add(v, 1);
	return rule == R_PASSED ? 0 : -EPERM;
}

static __always_inline bool is_cgroupfs(struct inode *inode)
{
	unsigned long magic = BPF_CORE_READ(inode, i_sb, s_magic);
	return magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC;
}

static __always_inline __u64 cgroup_id(struct cgroup *c)
{
	struct kernfs_node___id *kn = (void *)BPF_CORE_READ(c, kn);
	return BPF_CORE_READ(kn, id);
}

/* Whether `c` is `anc` or lies below it. */
static __always_inline bool below(struct cgroup *c, struct cgroup *anc)
{
	int level = BPF_CORE_READ(anc, level);
	if (BPF_CORE_READ(c, level) < level || level < 0 || level > 4095)
		return false;
	struct cgroup *a = NULL;
	bpf_core_read(&a, sizeof(a), &c->ancestors[level]);
	return a == anc;
}

/* A cgroup of the tracked hierarchy at or below the tracked root. */
static __always_inline bool in_scope(struct cgroup *c)
{
	if (!c || BPF_CORE_READ(c, root, hierarchy_id) != (int)hierarchy_id)
		return false;
	int level = BPF_CORE_READ(c, level);
	if (level < (int)root_level)
		return false;
	struct cgroup *anc = NULL;
	bpf_core_read(&anc, sizeof(anc), &c->ancestors[root_level]);
	return anc && cgroup_id(anc) == root_cgroup_id;
}

/* A task's cgroup in the tracked hierarchy (its css_set's links). */
static __always_inline struct cgroup *task_cgroup(struct task_struct *t)
{
	struct css_set *cset = BPF_CORE_READ(t, cgroups);
	struct list_head *head = (struct list_head *)((char *)cset + bpf_core_field_offset(struct css_set, cgrp_links));
	struct list_head *pos = BPF_CORE_READ(cset, cgrp_links.next);
	__u64 link_off = bpf_core_field_offset(struct cgrp_cset_link, cgrp_link);
	for (int i = 0; i < MAX_HIERARCHIES && pos && pos != head; i++) {
		struct cgrp_cset_link *link = (void *)((char *)pos - link_off);
		struct cgroup *c = BPF_CORE_READ(link, cgrp);
		if (BPF_CORE_READ(c, root, hierarchy_id) == (int)hierarchy_id)
			return c;
		pos = BPF_CORE_READ(pos, next);
	}
	return NULL;
}

/* CAP_SYS_ADMIN in the daemon's user namespace (subjective credentials, as capable() checks).
 * kernel_cap_t is `{ u64 val; }` since 6.3 and `{ u32 cap[2]; }` before: the
 * same 8 bytes on a little-endian machine, read whole (only the field
 * cap_effective is relocated, whichever its inner layout). */
static __always_inline bool sys_admin(struct task_struct *t)
{
	const struct cred *cred = BPF_CORE_READ(t, cred);
	__u64 caps = 0;
	bpf_core_read(&caps, sizeof(caps), &cred->cap_effective);
	return (caps & (1ULL << CAP_SYS_ADMIN)) && BPF_CORE_READ(t, cred, user_ns, ns.inum) == own_user_ns;
}

/* The task with pid `nr` in the writer's pid namespace: idr_find on the
 * namespace's IDR (a radix tree), then the pid's first PIDTYPE_PID task.
 * Runs under RCU (non-sleepable LSM programs do). */
static __always_inline struct task_struct *task_by_vpid(struct task_struct *cur, __u32 nr)
{
	struct pid *own = BPF_CORE_READ(cur, thread_pid);
	unsigned int level = BPF_CORE_READ(own, level);
	struct pid_namespace *ns = NULL;
	if (level > 32)
		return NULL;
	bpf_core_read(&ns, sizeof(ns), &own->numbers[level].ns);
	if (!ns)
		return NULL;
	unsigned long index = nr - BPF_CORE_READ(ns, idr.idr_base);
	unsigned long entry = (unsigned long)BPF_CORE_READ(ns, idr.idr_rt.xa_head);
	for (int depth = 0; depth < 8; depth++) {
		/* An internal entry (a node) has the low bits 10 and lies above 4096. */
		if ((entry & 3) != 2 || entry <= 4096)
			break;
		struct xa_node *node = (void *)(entry - 2);
		unsigned char shift = BPF_CORE_READ(node, shift);
		if (shift > 60)
			return NULL;
		unsigned long offset = (index >> shift) & 63;
		void *slot = NULL;
		bpf_core_read(&slot, sizeof(slot), &node->slots[offset]);
		entry = (unsigned long)slot;
		if (shift == 0)
			break;
	}
	if (!entry || (entry & 3) == 2)
		return NULL;
	struct pid *pid = (void *)entry;
	struct hlist_node *first = NULL;
	bpf_core_read(&first, sizeof(first), &pid->tasks[0].first);
	if (!first)
		return NULL;
	/* The number must be the pid's own in that namespace. */
	struct upid up = {};
	bpf_core_read(&up, sizeof(up), &pid->numbers[level]);
	if (up.nr != (int)nr || up.ns != ns)
		return NULL;
	return (void *)((char *)first - bpf_core_field_offset(struct task_struct, pid_links));
}

/* Reads the first `len` bytes the writer is writing; 0 when unknown. */
static __always_inline long written_bytes(struct task_struct *cur, char *buf, unsigned long len)
{
	struct pt_regs *regs = (void *)bpf_task_pt_regs(cur);
	if (!regs)
		return 0;
	unsigned long nr = BPF_CORE_READ(regs, orig_ax);
	void *ubuf;
	unsigned long count;
	if (nr == NR_WRITE || nr == NR_PWRITE64) {
		ubuf = (void *)BPF_CORE_READ(regs, si);
		count = BPF_CORE_READ(regs, dx);
	} else if (nr == NR_WRITEV || nr == NR_PWRITEV || nr == NR_PWRITEV2) {
		if (BPF_CORE_READ(regs, dx) != 1)
			return 0;
		struct iovec iov = {};
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)BPF_CORE_READ(regs, si)))
			return 0;
		ubuf = iov.iov_base;
		count = iov.iov_len;
	} else {
		return 0;
	}
	if (count == 0 || count >= len)
		return 0;
	/* The verifier must see the size bounded where the helper is called.
	 * Without the barrier clang folds the mask into the check above (it
	 * knows count < len) and passes count as it is, whose range the
	 * verifier did not learn from that check ("R2 min value is negative"
	 * on 6.1). `len` is a power of two (the callers' buffer size). */
	barrier_var(count);
	count &= len - 1;
	if (bpf_probe_read_user(buf, count, ubuf))
		return 0;
	return count;
}

/* Parses a pid as the kernel's kstrtoint(strstrip(buf), 0) would, for
 * plain decimal only: -1 for anything else (refused). */
static __always_inline long parse_pid(const char *buf, long n)
{
	long start = 0, end = n, value = 0;
	for (int i = 0; i < 32 && start < end; i++) {
		char c = buf[start & 31];
		if (c != ' ' && c != '\t' && c != '\n')
			break;
		start++;
	}
	for (int i = 0; i < 32 && end > start; i++) {
		char c = buf[(end - 1) & 31];
		if (c != ' ' && c != '\t' && c != '\n')
			break;
		end--;
	}
	if (end <= start || end - start > 10)
		return -1;
	if (buf[start & 31] == '0' && end - start > 1)
		return -1; /* octal to the kernel */
	for (int i = 0; i < 10; i++) {
		if (start + i >= end)
			break;
		char c = buf[(start + i) & 31];
		if (c < '0' || c > '9')
			return -1;
		value = value * 10 + (c - '0');
	}
	return value > 0x7fffffff ? -1 : value;
}

SEC("lsm/file_permission")
int BPF_PROG(nsg_file_permission, struct file *file, int mask, int ret)
{
	if (ret)
		return ret;
	if (!(mask & MAY_WRITE))
		return 0;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (!is_cgroupfs(inode))
		return 0;
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	char name[16] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(dentry, d_name.name));
	/* Compared letter by letter: no string constants (a .rodata.str section). */
	bool tasks = name[0] == 't' && name[1] == 'a' && name[2] == 's' && name[3] == 'k' && name[4] == 's' && name[5] == 0;
	bool cgroup_ = name[0] == 'c' && name[1] == 'g' && name[2] == 'r' && name[3] == 'o' && name[4] == 'u' && name[5] == 'p' && name[6] == '.';
	bool procs = cgroup_ && name[7] == 'p' && name[8] == 'r' && name[9] == 'o' && name[10] == 'c' && name[11] == 's' && name[12] == 0;
	bool threads = cgroup_ && name[7] == 't' && name[8] == 'h' && name[9] == 'r' && name[10] == 'e' && name[11] == 'a' &&
		       name[12] == 'd' && name[13] == 's' && name[14] == 0;
	if (!tasks && !procs && !threads)
		return 0;
	struct kernfs_node *dir_kn = BPF_CORE_READ(dentry, d_parent, d_inode, i_private);
	struct cgroup *dst = BPF_CORE_READ(dir_kn, priv);
	if (!in_scope(dst))
		return 0;
	if ((bpf_get_current_pid_tgid() >> 32) == daemon_tgid)
		return 0;

	struct task_struct *cur = bpf_get_current_task_btf();
	char buf[32] = {};
	long n = written_bytes(cur, buf, sizeof(buf));
	if (n <= 0)
		return refuse(R_UNREADABLE_WRITE);
	long nr = parse_pid(buf, n);
	if (nr < 0)
		return refuse(R_UNREADABLE_WRITE);

	struct task_struct *task = cur;
	bool self = nr == 0;
	if (!self) {
		task = task_by_vpid(cur, (__u32)nr);
		if (!task)
			return 0; /* the kernel answers ESRCH */
		if (tasks)
			self = task == cur;
		else
			self = BPF_CORE_READ(task, tgid) == BPF_CORE_READ(cur, tgid);
	}
	struct cgroup *mover = task_cgroup(cur);
	if (!self) {
		if (!sys_admin(cur))
			return refuse(R_ATTACH_OTHER_NEEDS_CAP_SYS_ADMIN);
		if (!mover || !below(dst, mover))
			return refuse(R_ATTACH_OTHER_BELOW_MOVER);
	}
	if (BPF_CORE_READ(dst, nr_populated_csets) != 0)
		return refuse(R_ATTACH_EMPTY_ONLY);
	struct cgroup *orig = task_cgroup(task);
	int level = BPF_CORE_READ(dst, level);
	struct cgroup *parent = NULL;
	if (level > 0 && level <= 4096)
		bpf_core_read(&parent, sizeof(parent), &dst->ancestors[level - 1]);
	if (!orig || orig != parent)
		return refuse(R_ATTACH_CHILD_ONLY);
	return refuse(R_PASSED);
}

SEC("lsm/inode_mkdir")
int BPF_PROG(nsg_inode_mkdir, struct inode *dir, struct dentry *dentry, umode_t mode, int ret)
{
	if (ret)
		return ret;
	if (!is_cgroupfs(dir))
		return 0;
	struct kernfs_node *kn = BPF_CORE_READ(dir, i_private);
	struct cgroup *parent = BPF_CORE_READ(kn, priv);
	if (!in_scope(parent))
		return 0;
	if ((bpf_get_current_pid_tgid() >> 32) == daemon_tgid)
		return 0;
	struct task_struct *cur = bpf_get_current_task_btf();
	if (!sys_admin(cur))
		return refuse(R_CREATE_NEEDS_CAP_SYS_ADMIN);
	struct cgroup *creator = task_cgroup(cur);
	if (!creator || !below(parent, creator))
		return refuse(R_CREATE_BELOW_CREATOR);
	return refuse(R_PASSED);
}
