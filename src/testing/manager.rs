//! A fake user manager: a peer-to-peer D-Bus server on a socket at
//! `<runtime>/<uid>/systemd/private`, answering `StartTransientUnit` and
//! `AttachProcessesToUnit` the way it is told (accept, refuse, or never
//! answer), and recording what it was asked. No root needed.

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

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
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub unit: String,
    pub properties: HashMap<String, OwnedValue>,
    pub pids: Vec<u32>,
}

/// The fake's calls, shared with the test.
pub type Calls = Arc<Mutex<Vec<Call>>>;

struct Manager {
    answer: Answer,
    calls: Calls,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn start_transient_unit(
        &self,
        name: String,
        _mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let pids = properties.iter().find(|(k, _)| k == "PIDs").and_then(|(_, v)| Vec::<u32>::try_from(v.try_clone().ok()?).ok());
        self.calls.lock().unwrap().push(Call {
            method: "StartTransientUnit",
            unit: name,
            properties: properties.into_iter().collect(),
            pids: pids.unwrap_or_default(),
        });
        self.answer().await?;
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap())
    }

    async fn attach_processes_to_unit(&self, name: String, _subcgroup: String, pids: Vec<u32>) -> zbus::fdo::Result<()> {
        self.calls.lock().unwrap().push(Call { method: "AttachProcessesToUnit", unit: name, properties: HashMap::new(), pids });
        self.answer().await
    }
}

impl Manager {
    async fn answer(&self) -> zbus::fdo::Result<()> {
        match self.answer {
            Answer::Accept => Ok(()),
            Answer::Refuse => Err(zbus::fdo::Error::Failed("Unit app-x.scope already exists.".into())),
            Answer::Hang => {
                async_io::Timer::after(Duration::from_secs(3600)).await;
                Ok(())
            }
        }
    }
}

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
            let manager = Manager { answer, calls: Arc::clone(&shared) };
            std::thread::spawn(move || {
                async_io::block_on(async move {
                    let guid = zbus::Guid::generate();
                    let built = zbus::connection::Builder::async_io_unix_stream(stream)
                        .server(guid)
                        .and_then(|b| b.p2p().serve_at("/org/freedesktop/systemd1", manager))
                        .map(|b| b.build());
                    let Ok(building) = built else { return };
                    let Ok(conn) = building.await else { return };
                    // Serve until the client goes.
                    let mut stream = zbus::MessageStream::from(&conn);
                    while futures_lite::StreamExt::next(&mut stream).await.is_some() {}
                });
            });
        }
    });
    calls
}
