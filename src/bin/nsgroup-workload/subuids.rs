//! `subuids`: what `newuidmap` sets up for a user with a subordinate range.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use rustix::thread::UnshareFlags;

use nsgroup::ffi::{fork, unshare_namespaces, Forked};

use super::{ns_inode, reap_all, say};

/// `subuids` (see its flags): the owner's user namespace is made in a
/// child; this process, root, writes its maps and waits for it.
pub(crate) fn run(owner: u32, base: u32, uids: u32, range_root: bool, command: &[String]) -> Result<()> {
    let (ready_r, ready_w) = std::io::pipe().context("pipe")?;
    let (mapped_r, mapped_w) = std::io::pipe().context("pipe")?;
    match fork()? {
        Forked::Child => {
            drop((ready_r, mapped_w));
            let r = become_id(owner)
                .and_then(|()| unshare_namespaces(UnshareFlags::NEWUSER).context("unshare(CLONE_NEWUSER)"))
                .and_then(|()| subuid_owner(uids, command, ready_w, mapped_r));
            if let Err(e) = r {
                eprintln!("subuids: {e:#}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        Forked::Parent { child } => {
            drop((ready_w, mapped_r));
            await_signal(&ready_r)?;
            let map = if range_root { format!("0 {base} {}\n", uids + 1) } else { format!("0 {owner} 1\n1 {base} {uids}\n") };
            for file in ["uid_map", "gid_map"] {
                let path = format!("/proc/{child}/{file}");
                std::fs::write(&path, &map).with_context(|| format!("writing {path}"))?;
            }
            signal(&mapped_w)?;
            reap_all();
        }
    }
    Ok(())
}

/// One byte through a pipe: the two sides of a fork wait for each other.
fn signal(mut w: &std::io::PipeWriter) -> Result<()> {
    w.write_all(b"x").context("writing to a sync pipe")
}

fn await_signal(mut r: &std::io::PipeReader) -> Result<()> {
    use std::io::Read;
    let mut b = [0u8; 1];
    match r.read(&mut b).context("reading a sync pipe")? {
        1 => Ok(()),
        _ => bail!("the other side of the fork exited"),
    }
}

/// Becomes uid and gid `id` with no supplementary groups (this process has one thread).
fn become_id(id: u32) -> Result<()> {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_groups(&[]).context("setgroups([])")?;
    let (gid, uid) = (Gid::from_raw(id), Uid::from_raw(id));
    rustix::thread::set_thread_res_gid(gid, gid, gid).with_context(|| format!("setresgid({id})"))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).with_context(|| format!("setresuid({id})"))?;
    Ok(())
}

/// The user namespace side of `subuids`: waits for its map, then runs
/// `command` as each inner uid and reports their first lines.
fn subuid_owner(uids: u32, command: &[String], ready: std::io::PipeWriter, mapped: std::io::PipeReader) -> Result<()> {
    use std::os::unix::process::CommandExt;
    signal(&ready)?;
    await_signal(&mapped)?;
    drop(ready);
    let (out_r, out_w) = std::io::pipe().context("pipe")?;
    let mut children = Vec::new();
    for k in 1..=uids {
        match fork()? {
            Forked::Child => {
                drop(out_r);
                let err = become_id(k).map(|()| {
                    std::process::Command::new(&command[0]).args(&command[1..]).stdout(std::process::Stdio::from(out_w)).exec()
                });
                eprintln!("inner uid {k}: {err:?}");
                std::process::exit(1);
            }
            Forked::Parent { child } => children.push(child),
        }
    }
    drop(out_w);
    let mut lines = Vec::new();
    let mut reader = std::io::BufReader::new(out_r);
    let mut line = String::new();
    while lines.len() < children.len() {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|_| line.trim_end().into()));
    }
    say(serde_json::json!({
        "pid": std::process::id(),
        "user_ns": ns_inode("/proc/self/ns/user")?,
        "children": children,
        "lines": lines,
    }))?;
    reap_all();
    Ok(())
}
