//! Compiles the BPF programs in `bpf/` with clang into `$OUT_DIR/nsgroup.bpf.o`.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("nsgroup.bpf.o");
    let clang = env::var("NSGROUP_CLANG").unwrap_or_else(|_| "clang".into());
    for f in ["bpf/nsgroup.bpf.c", "bpf/nsgroup.h", "bpf/kernel.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=NSGROUP_CLANG");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror", "-Ibpf", "-c"])
        .arg("bpf/nsgroup.bpf.c")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} to build the BPF programs ({e}); install clang and libbpf-dev (see README)"));
    assert!(status.success(), "{clang} failed to compile bpf/nsgroup.bpf.c");
    // Strict mode's LSM program (src/api/strict.rs), a second object.
    println!("cargo:rerun-if-changed=bpf/lsm.bpf.c");
    let lsm = out.with_file_name("lsm.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror", "-c", "bpf/lsm.bpf.c", "-o"])
        .arg(&lsm)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} to build bpf/lsm.bpf.c ({e})"));
    assert!(status.success(), "{clang} failed to compile bpf/lsm.bpf.c");
}
