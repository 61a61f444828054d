//! A blocking client of the API, for the command line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::proto::{Request, VERSION};

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens (no socket, or a stale one): the daemon does not run.
    #[error("no daemon listens on {}", .0.display())]
    NoDaemon(PathBuf),
    /// The socket's mode or group keeps this user out.
    #[error("connecting to {}: permission denied (the socket's mode or group keeps this user out; see api.socket_mode)", .0.display())]
    NotPermitted(PathBuf),
    #[error("talking to the daemon on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon closed the connection without an answer")]
    Closed,
    #[error("the daemon's answer is not JSON: {0}")]
    BadAnswer(serde_json::Error),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
                return Err(ClientError::NoDaemon(path.to_path_buf()))
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                return Err(ClientError::NotPermitted(path.to_path_buf()))
            }
            Err(source) => return Err(ClientError::Io { path: path.to_path_buf(), source }),
        };
        let reader = stream.try_clone().map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
        Ok(Client { path: path.to_path_buf(), writer: stream, reader: BufReader::new(reader), next_id: 1 })
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io { path: self.path.clone(), source }
    }

    /// Sends one request; its answer is the next line [`Client::read`] returns.
    pub fn send(&mut self, request: &Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut v = serde_json::to_value(request).expect("a request serializes");
        v["version"] = VERSION.into();
        v["id"] = id.into();
        let mut line = serde_json::to_vec(&v).expect("a value serializes");
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|e| self.io(e))?;
        Ok(id)
    }

    /// Sends a raw line as it is (for `nsgroup api`).
    pub fn send_raw(&mut self, line: &str) -> Result<(), ClientError> {
        let mut bytes = line.trim_end_matches('\n').as_bytes().to_vec();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| self.io(e))
    }

    /// The next line from the daemon, parsed; `None` at end of stream.
    pub fn read(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line).map(Some).map_err(ClientError::BadAnswer),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Sends a request and waits for its answer (skipping event lines).
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let id = self.send(request)?;
        loop {
            let Some(v) = self.read()? else { return Err(ClientError::Closed) };
            if v["type"] != "event" && (v["id"] == id || v["id"].is_null()) {
                return Ok(v);
            }
        }
    }
}
