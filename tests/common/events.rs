//! A subscription to a test daemon's events (tests/api.rs, tests/top.rs).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Api;

/// Reads events from a subscription until `done` says so; every line.
pub fn read_events(r: &mut BufReader<UnixStream>, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut out = vec![];
    let end = Instant::now() + Duration::from_secs(60);
    while !done(&out) {
        assert!(Instant::now() < end, "events did not come: {} so far", out.len());
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => panic!("the subscription closed"),
            Ok(_) => out.push(serde_json::from_str(&line).unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

/// Subscribes to `api`'s events; the reader, past the `ok` answer.
pub fn subscribe(api: &Api) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(&api.socket).unwrap();
    s.write_all(b"{\"version\":1,\"id\":1,\"type\":\"subscribe\"}\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut r = BufReader::new(s);
    let first = read_events(&mut r, |v| !v.is_empty());
    assert_eq!(first[0]["type"], "ok", "{}", first[0]);
    assert_eq!(first[0]["request"], "subscribe");
    r
}
