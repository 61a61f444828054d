use super::*;
use crate::core::unit::Origin;
use crate::testing::manager::{serve, Answer};

const SHORT: Duration = Duration::from_millis(300);

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn plan(slice: Option<&str>) -> UnitPlan {
    let origin = Origin { uid: me(), unit: "app-sandbox1.scope".into(), slice: slice.map(str::to_string), cgroup: "/x/app-sandbox1.scope".into() };
    UnitPlan { origin, scope: "app-nsgroup-unshare-node_7-1.scope".into(), pid: 7, start_ns: 1, comm: "unshare".into() }
}

#[test]
fn the_manager_is_asked_for_a_delegated_scope_bound_to_the_origin_with_its_limits() {
    let run = tempfile::tempdir().unwrap();
    let calls = serve(run.path(), me(), Answer::Accept);
    let mut bus = ManagerBus::connect(run.path(), me(), Duration::from_secs(5)).unwrap();
    let limits = Limits { memory_max: Some(64 << 20), tasks_max: Some(50), ..Limits::default() };
    bus.start_scope(&plan(Some("app.slice")), &limits).unwrap();
    bus.attach("app-nsgroup-unshare-node_7-1.scope", &[8, 9]).unwrap();
    let calls = calls.lock().unwrap();
    let start = &calls[0];
    assert_eq!((start.method.as_str(), start.unit.as_str(), start.pids.as_slice()), ("StartTransientUnit", "app-nsgroup-unshare-node_7-1.scope", &[7][..]));
    let prop = |k: &str| start.properties.get(k).unwrap_or_else(|| panic!("no {k}")).try_clone().unwrap();
    assert!(bool::try_from(prop("Delegate")).unwrap());
    assert_eq!(String::try_from(prop("Slice")).unwrap(), "app.slice");
    assert_eq!(Vec::<String>::try_from(prop("PartOf")).unwrap(), ["app-sandbox1.scope"]);
    assert_eq!(Vec::<String>::try_from(prop("After")).unwrap(), ["app-sandbox1.scope"]);
    assert_eq!(u64::try_from(prop("MemoryMax")).unwrap(), 64 << 20);
    assert_eq!(u64::try_from(prop("TasksMax")).unwrap(), 50);
    assert!(!start.properties.contains_key("BindsTo") && !start.properties.contains_key("CPUQuotaPerSecUSec"));
    assert_eq!((calls[1].method.as_str(), calls[1].pids.as_slice()), ("AttachProcessesToUnit", &[8, 9][..]));
    drop(calls);
    // No slice of its own: none is asked for.
    bus.start_scope(&plan(None), &Limits::default()).unwrap();
}

#[test]
fn a_refusal_is_the_managers_words_and_a_hung_manager_costs_its_deadline() {
    let run = tempfile::tempdir().unwrap();
    serve(run.path(), me(), Answer::Refuse);
    let mut bus = ManagerBus::connect(run.path(), me(), Duration::from_secs(5)).unwrap();
    let e = bus.start_scope(&plan(None), &Limits::default()).unwrap_err();
    assert!(matches!(&e, BusError::Refused(text) if text.contains("already exists")), "{e}");
    assert!(!e.unreachable());

    let hung = tempfile::tempdir().unwrap();
    serve(hung.path(), me(), Answer::Hang);
    let mut bus = ManagerBus::connect(hung.path(), me(), SHORT).unwrap();
    let t = Instant::now();
    let e = bus.start_scope(&plan(None), &Limits::default()).unwrap_err();
    assert!(e.unreachable(), "{e}");
    assert!(t.elapsed() < SHORT * 10, "{:?}", t.elapsed());
}

#[test]
fn a_socket_that_never_speaks_costs_its_deadline() {
    let run = tempfile::tempdir().unwrap();
    let dir = run.path().join(me().to_string()).join("systemd");
    std::fs::create_dir_all(&dir).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("private")).unwrap();
    let t = Instant::now();
    let e = ManagerBus::connect(run.path(), me(), SHORT).err().unwrap();
    assert!(matches!(e, BusError::Timeout(_)), "{e}");
    assert!(t.elapsed() < SHORT * 10);
}

#[test]
fn only_the_users_own_socket_is_connected_to() {
    let run = tempfile::tempdir().unwrap();
    let e = ManagerBus::connect(run.path(), me(), SHORT).err().unwrap();
    assert!(matches!(&e, BusError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "absent: {e}");
    // A symlink anywhere on the way (to another manager's socket, say) is not followed.
    let real = tempfile::tempdir().unwrap();
    serve(real.path(), me(), Answer::Accept);
    std::fs::create_dir_all(run.path().join(me().to_string())).unwrap();
    std::os::unix::fs::symlink(real.path().join(me().to_string()).join("systemd"), run.path().join(me().to_string()).join("systemd")).unwrap();
    let e = ManagerBus::connect(run.path(), me(), SHORT).err().unwrap();
    assert!(matches!(&e, BusError::Open { source, .. } if source.raw_os_error() == Some(libc::ELOOP)), "symlinked: {e}");
    // A plain file is no socket.
    let file = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(file.path().join(me().to_string()).join("systemd")).unwrap();
    std::fs::write(file.path().join(me().to_string()).join("systemd/private"), "").unwrap();
    assert!(matches!(ManagerBus::connect(file.path(), me(), SHORT), Err(BusError::NotTheUsers { .. })));
    if me() != 0 {
        return;
    }
    // Root's own socket, claimed to be uid 65534's: not hers. Given to
    // her: served by root, so not her manager.
    let other = tempfile::tempdir().unwrap();
    serve(other.path(), 65534, Answer::Accept);
    let socket = socket_path(other.path(), 65534);
    assert!(matches!(ManagerBus::connect(other.path(), 65534, SHORT), Err(BusError::NotTheUsers { uid: 65534, .. })));
    rustix::fs::chown(&socket, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    let e = ManagerBus::connect(other.path(), 65534, SHORT).err().unwrap();
    assert!(matches!(e, BusError::NotTheManager { uid: 65534, served_by: 0, .. }), "{e}");
}
