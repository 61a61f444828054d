//! A fake user manager: a peer-to-peer D-Bus server on a socket at
//! `<runtime>/<uid>/systemd/private`, answering `StartTransientUnit` and
//! `AttachProcessesToUnit` the way it is told (accept, refuse, or never
//! answer) from `org.freedesktop.systemd1` as systemd does, an unrelated
//! message before each reply, and recording what it was asked. No root needed.

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zvariant::OwnedValue;

use crate::sys::systemd::wire::Conn;

/// How the fake answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A job, as systemd's.
    Accept,
    /// `org.freedesktop.systemd1.UnitExists`, as for a name taken.
    Refuse,
    /// Nothing (a hung manager).
    Hang,
}

/// One call the fake got: the method, the unit, and its properties (or the pids).
#[derive(Debug)]
pub struct Call {
    pub method: String,
    pub unit: String,
    pub properties: HashMap<String, OwnedValue>,
    pub pids: Vec<u32>,
}

/// The fake's calls, shared with the test.
pub type Calls = Arc<Mutex<Vec<Call>>>;

type StartArgs = (String, String, Vec<(String, OwnedValue)>, Vec<(String, Vec<(String, OwnedValue)>)>);

/// Serves a fake manager for uid `uid` below `runtime` on a thread of its
/// own until the process ends; returns what it is asked.
pub fn serve(runtime: &Path, uid: u32, answer: Answer) -> Calls {
    let dir = runtime.join(uid.to_string()).join("systemd");
    std::fs::create_dir_all(&dir).unwrap();
    let listener = UnixListener::bind(dir.join("private")).unwrap();
    let calls = Calls::default();
    let shared = Arc::clone(&calls);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let calls = Arc::clone(&shared);
            std::thread::spawn(move || {
                let forever = Instant::now() + Duration::from_secs(3600);
                let Ok(mut conn) = Conn::new(stream, forever) else { return };
                if conn.accept().is_err() {
                    return;
                }
                while let Ok(m) = conn.read() {
                    let call = match m.member.as_deref() {
                        Some("StartTransientUnit") => m.body::<StartArgs>().ok().map(|(unit, _, props, _)| {
                            let pids = props.iter().find(|(k, _)| k == "PIDs").and_then(|(_, v)| Vec::<u32>::try_from(v.try_clone().ok()?).ok());
                            Call { method: "StartTransientUnit".into(), unit, properties: props.into_iter().collect(), pids: pids.unwrap_or_default() }
                        }),
                        Some("AttachProcessesToUnit") => m.body::<(String, String, Vec<u32>)>().ok().map(|(unit, _, pids)| Call {
                            method: "AttachProcessesToUnit".into(),
                            unit,
                            properties: HashMap::new(),
                            pids,
                        }),
                        _ => None,
                    };
                    let Some(call) = call else { return };
                    calls.lock().unwrap().push(call);
                    // Something else comes first (systemd sends signals on private connections too).
                    if conn.reply(0, None, &("app-x.scope",)).is_err() {
                        return;
                    }
                    let sent = match answer {
                        Answer::Accept => conn.reply(m.serial, None, &(zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap(),)),
                        Answer::Refuse => conn.reply(m.serial, Some("org.freedesktop.systemd1.UnitExists"), &("Unit app-x.scope already exists.",)),
                        Answer::Hang => {
                            std::thread::sleep(Duration::from_secs(3600));
                            return;
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    calls
}
