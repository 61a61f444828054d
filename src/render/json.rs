//! The tree as one JSON document (schema in docs/semantics.md).

use std::io::{self, Write};

use crate::model::TreeNode;

/// Writes the tree as JSON followed by a newline.
pub fn write(out: &mut impl Write, tree: &TreeNode) -> io::Result<()> {
    serde_json::to_writer(&mut *out, tree)?;
    writeln!(out)
}
