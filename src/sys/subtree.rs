//! cgroup2 controllers for nodes: enabling them in a parent's
//! `cgroup.subtree_control`. The no-internal-process rule forbids that while
//! the parent holds tasks; inside a node (a cgroup nsgroup owns) the tasks
//! may first move into a leaf child named [`LEAF`], never elsewhere.

use std::fs;

use rustix::io::Errno;

use super::hierarchy::Hierarchy;
use super::error::IoError;
use crate::core::cgpath::join;

/// The child of a node that holds the node's own tasks once the node
/// passes controllers on to its child nodes.
pub const LEAF: &str = "leaf";

/// How many rounds of moving a parent's tasks into its leaf before giving
/// up (tasks forked meanwhile land in the parent).
const LEAF_ROUNDS: usize = 10;

/// Whose tasks may move into a leaf child so that controllers can be
/// enabled for the nodes made below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeafPolicy {
    /// Nodes only: cgroups nsgroup made.
    Nodes,
    /// Any cgroup of the tracked subtree (delegated to nsgroup).
    Everywhere,
    /// None.
    Never,
}

impl LeafPolicy {
    /// Whether a parent's tasks may move into its leaf.
    pub fn allows(self, parent_is_node: bool) -> bool {
        match self {
            LeafPolicy::Nodes => parent_is_node,
            LeafPolicy::Everywhere => true,
            LeafPolicy::Never => false,
        }
    }
}

/// What enabling found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enabled {
    /// Every wanted controller is enabled for the parent's children.
    All,
    /// All, after the parent's tasks moved into its leaf child at this path.
    AfterLeaf(String),
    /// Some are not, and why: a child made now will lack them.
    Lacking { controllers: Vec<String>, why: String },
}

fn read_list(hierarchy: &Hierarchy, rel: &str, file: &str) -> Result<Vec<String>, IoError> {
    let path = hierarchy.dir(rel).join(file);
    let text = fs::read_to_string(&path).map_err(|e| IoError::new("read", &path, e))?;
    Ok(text.split_ascii_whitespace().map(str::to_string).collect())
}

fn write_enable(hierarchy: &Hierarchy, rel: &str, controllers: &[String]) -> Result<Result<(), Errno>, IoError> {
    let path = hierarchy.dir(rel).join("cgroup.subtree_control");
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    match fs::write(&path, line.join(" ")) {
        Ok(()) => Ok(Ok(())),
        Err(e) => match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(errno @ (Errno::BUSY | Errno::OPNOTSUPP | Errno::NOENT)) => Ok(Err(errno)),
            _ => Err(IoError::new("write", &path, e)),
        },
    }
}

/// Moves every task of `rel` into `rel/leaf`; false when tasks keep coming.
fn empty_into_leaf(hierarchy: &Hierarchy, rel: &str) -> Result<Option<String>, IoError> {
    let leaf = join(rel, LEAF);
    let dir = hierarchy.dir(&leaf);
    match rustix::fs::mkdir(&dir, rustix::fs::Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(IoError::new("mkdir", &dir, e)),
    }
    let procs = dir.join("cgroup.procs");
    for _ in 0..LEAF_ROUNDS {
        let pids = read_list(hierarchy, rel, "cgroup.procs")?;
        if pids.is_empty() {
            return Ok(Some(leaf));
        }
        for pid in pids {
            if let Err(e) = fs::write(&procs, &pid) {
                if !super::error::vanished(&e) {
                    return Err(IoError::new("move task into", &procs, e));
                }
            }
        }
    }
    Ok(None)
}

/// Enables `wanted` in `parent`'s `cgroup.subtree_control` where it can;
/// `may_leaf`: the parent's tasks may move into its leaf for that.
pub fn enable(hierarchy: &Hierarchy, parent: &str, wanted: &[String], may_leaf: bool) -> Result<Enabled, IoError> {
    let present = read_list(hierarchy, parent, "cgroup.subtree_control")?;
    let missing: Vec<String> = wanted.iter().filter(|c| !present.contains(c)).cloned().collect();
    if missing.is_empty() {
        return Ok(Enabled::All);
    }
    let available = read_list(hierarchy, parent, "cgroup.controllers")?;
    let (possible, unavailable): (Vec<String>, Vec<String>) = missing.into_iter().partition(|c| available.contains(c));
    let lacking = |mut controllers: Vec<String>, why: String| {
        controllers.extend(unavailable.iter().cloned());
        Enabled::Lacking { controllers, why }
    };
    let mut leaf = None;
    // A parent that holds tasks is emptied first (or left alone), whatever
    // the kernel would take: it accepts threaded controllers (pids) there,
    // and a domain child of such a parent then refuses every task (EOPNOTSUPP).
    if !possible.is_empty() && !read_list(hierarchy, parent, "cgroup.procs")?.is_empty() {
        if !may_leaf {
            let why = format!("{parent} holds tasks, and the `leaf` policy keeps them there (no internal processes)");
            return Ok(lacking(possible, why));
        }
        leaf = empty_into_leaf(hierarchy, parent)?;
        if leaf.is_none() {
            return Ok(lacking(possible, format!("{parent} keeps getting tasks while they move into its {LEAF}")));
        }
    }
    if !possible.is_empty() {
        match write_enable(hierarchy, parent, &possible)? {
            Ok(()) => {}
            Err(Errno::BUSY) if may_leaf => {
                leaf = empty_into_leaf(hierarchy, parent)?;
                let retried = if leaf.is_some() { write_enable(hierarchy, parent, &possible)? } else { Err(Errno::BUSY) };
                if retried.is_err() {
                    return Ok(lacking(possible, format!("{parent} keeps getting tasks while they move into its {LEAF}")));
                }
            }
            Err(Errno::BUSY) => {
                let why = format!("{parent} holds tasks, and the `leaf` policy keeps them there (no internal processes)");
                return Ok(lacking(possible, why));
            }
            Err(e) => return Ok(lacking(possible, format!("{parent} refused them: {e}"))),
        }
    }
    if !unavailable.is_empty() {
        return Ok(lacking(Vec::new(), format!("{parent} does not have them (enable them above it)")));
    }
    Ok(leaf.map_or(Enabled::All, Enabled::AfterLeaf))
}
