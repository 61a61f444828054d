//! The D-Bus wire protocol, as much of it as a peer-to-peer call to a
//! manager's private socket needs: the `EXTERNAL` handshake, a message's
//! header and body (marshalled by zvariant), and reading messages back with
//! every length bounded and every read within a deadline.
//!
//! Hand-written on purpose: zbus 5.19 (and 6.2) takes a message's sender for
//! a unique name, and systemd's private socket sends its replies from
//! `org.freedesktop.systemd1`; zbus's reader thread panicked on the first
//! reply there (seen in the guest, systemd 252). Only the few fields a
//! call and its reply carry are read; nothing is taken for a name.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::Serialize;
use zvariant::serialized::{Context, Data};
use zvariant::{DynamicType, ObjectPath, OwnedValue, Signature, LE};

/// A message's header and body together, at most (a hostile peer's lengths are checked against it).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Messages that are not the reply (signals) read while waiting for it, at most.
const MAX_SKIPPED: usize = 256;
/// The longest line of the handshake.
const MAX_AUTH_LINE: usize = 512;

const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;

/// Header field codes.
const PATH: u8 = 1;
const INTERFACE: u8 = 2;
const MEMBER: u8 = 3;
const ERROR_NAME: u8 = 4;
const REPLY_SERIAL: u8 = 5;
const DESTINATION: u8 = 6;
const SENDER: u8 = 7;
const SIGNATURE: u8 = 8;

/// A message read: its type, serial, the fields a call or reply needs, and its body.
#[derive(Debug)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub signature: String,
    body: Vec<u8>,
    big_endian: bool,
}

impl Message {
    /// The body as `T` (a tuple: one field per argument), with the
    /// signature it came with. (A body of one struct reads as its fields.)
    pub fn body<T>(&self) -> Result<T, zvariant::Error>
    where
        T: for<'d> serde::Deserialize<'d> + zvariant::Type,
    {
        let ctxt = Context::new_dbus(if self.big_endian { zvariant::BE } else { LE }, 0);
        let sig = format!("({})", self.signature);
        Data::new(&self.body[..], ctxt).deserialize_for_signature(sig.as_str()).map(|(v, _)| v)
    }
}

/// A stream with a deadline: every read and write ends by it.
pub struct Conn {
    stream: UnixStream,
    deadline: Instant,
    serial: u32,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the peer did not answer in time")
}

impl Conn {
    pub fn new(stream: UnixStream, deadline: Instant) -> io::Result<Conn> {
        stream.set_nonblocking(false)?;
        Ok(Conn { stream, deadline, serial: 0 })
    }

    /// A new deadline for what follows.
    pub fn until(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(timed_out)?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            self.arm()?;
            match self.stream.read(&mut buf[at..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection")),
                Ok(n) => at += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(timed_out()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.arm()?;
        self.stream.write_all(buf).map_err(|e| if e.kind() == io::ErrorKind::WouldBlock { timed_out() } else { e })
    }

    /// One handshake line, without its `\r\n`.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            if line.len() >= MAX_AUTH_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a handshake line too long"));
            }
            let mut b = [0u8];
            self.read_exact(&mut b)?;
            line.push(b[0]);
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a handshake line not UTF-8"))
    }

    /// The client's handshake: `EXTERNAL` as the uid it runs as.
    pub fn authenticate(&mut self) -> io::Result<()> {
        let uid = rustix::process::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        self.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let answer = self.read_line()?;
        if !answer.starts_with("OK ") {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("the handshake was refused: {:?}", truncated(&answer))));
        }
        self.write_all(b"BEGIN\r\n")
    }

    /// The server's handshake (the tests' fake manager): takes any
    /// `EXTERNAL`, answers `OK`, waits for `BEGIN`.
    pub fn accept(&mut self) -> io::Result<()> {
        let mut nul = [0u8];
        self.read_exact(&mut nul)?;
        let auth = self.read_line()?;
        if !auth.starts_with("AUTH EXTERNAL") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not EXTERNAL"));
        }
        self.write_all(b"OK 0123456789abcdef0123456789abcdef\r\n")?;
        match self.read_line()?.as_str() {
            "BEGIN" => Ok(()),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected BEGIN, got {:?}", truncated(other)))),
        }
    }

    /// Calls `member` of `interface` at `path` on `destination` with
    /// `body` (a tuple: its fields are the arguments); returns the serial.
    pub fn call<B>(&mut self, destination: &str, path: &str, interface: &str, member: &str, body: &B) -> io::Result<u32>
    where
        B: Serialize + DynamicType,
    {
        ObjectPath::try_from(path).map_err(invalid)?;
        let fields = vec![
            Field::Text(PATH, b'o', path),
            Field::Text(INTERFACE, b's', interface),
            Field::Text(MEMBER, b's', member),
            Field::Text(DESTINATION, b's', destination),
        ];
        self.send(METHOD_CALL, fields, body)
    }

    /// Sends a reply to `serial` (the tests' fake manager): a return with
    /// `body`, or an error `name` whose body is its message.
    pub fn reply<B>(&mut self, serial: u32, error: Option<&str>, body: &B) -> io::Result<u32>
    where
        B: Serialize + DynamicType,
    {
        // Sent the way systemd's private socket sends: from its well-known name.
        let mut fields = vec![Field::Number(REPLY_SERIAL, serial), Field::Text(SENDER, b's', "org.freedesktop.systemd1")];
        let kind = match error {
            Some(name) => {
                fields.push(Field::Text(ERROR_NAME, b's', name));
                ERROR
            }
            None => METHOD_RETURN,
        };
        self.send(kind, fields, body)
    }

    fn send<B>(&mut self, kind: u8, fields: Vec<Field<'_>>, body: &B) -> io::Result<u32>
    where
        B: Serialize + DynamicType,
    {
        self.serial = self.serial.wrapping_add(1).max(1);
        // A tuple marshalled at offset 0 is its fields one after another: the body.
        let body_bytes = zvariant::to_bytes(Context::new_dbus(LE, 0), body).map_err(invalid)?;
        let sig = body.signature().to_string();
        let sig = sig.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(&sig);
        let mut bytes = vec![b'l', kind, 0, 1];
        bytes.extend_from_slice(&(body_bytes.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.serial.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        for field in &fields {
            field.marshal(&mut bytes);
        }
        if !sig.is_empty() {
            Field::Text(SIGNATURE, b'g', sig).marshal(&mut bytes);
        }
        let fields_len = (bytes.len() - 16) as u32;
        bytes[12..16].copy_from_slice(&fields_len.to_le_bytes());
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        bytes.extend_from_slice(&body_bytes);
        self.write_all(&bytes)?;
        Ok(self.serial)
    }

    /// The next message.
    pub fn read(&mut self) -> io::Result<Message> {
        let mut fixed = [0u8; 16];
        self.read_exact(&mut fixed)?;
        let big_endian = match fixed[0] {
            b'l' => false,
            b'B' => true,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "not a D-Bus message")),
        };
        let u32_at = |at: usize| {
            let b: [u8; 4] = fixed[at..at + 4].try_into().unwrap();
            if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
        };
        let (body_len, fields_len) = (u32_at(4) as usize, u32_at(12) as usize);
        if body_len > MAX_MESSAGE || fields_len > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a message of {body_len} + {fields_len} bytes")));
        }
        let header_len = (16 + fields_len).next_multiple_of(8);
        if header_len + body_len > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a message of {} bytes", header_len + body_len)));
        }
        let mut bytes = vec![0u8; header_len + body_len];
        bytes[..16].copy_from_slice(&fixed);
        self.read_exact(&mut bytes[16..])?;
        let ctxt = Context::new_dbus(if big_endian { zvariant::BE } else { LE }, 0);
        type Header = (u8, u8, u8, u8, u32, u32, Vec<(u8, OwnedValue)>);
        let ((_, kind, _, _, _, serial, fields), _): (Header, _) = Data::new(&bytes[..16 + fields_len], ctxt).deserialize().map_err(invalid)?;
        let mut m = Message {
            kind,
            serial,
            reply_serial: None,
            member: None,
            error_name: None,
            signature: String::new(),
            body: bytes[header_len..].to_vec(),
            big_endian,
        };
        for (code, value) in fields {
            let text = || <&str>::try_from(&*value).ok().map(str::to_string);
            match code {
                REPLY_SERIAL => m.reply_serial = u32::try_from(&*value).ok(),
                MEMBER => m.member = text(),
                ERROR_NAME => m.error_name = text(),
                SIGNATURE => m.signature = <&Signature>::try_from(&*value).map(|s| s.to_string_no_parens()).unwrap_or_default(),
                _ => {}
            }
        }
        Ok(m)
    }

    /// The reply to `serial`, skipping what else comes first (at most [`MAX_SKIPPED`]).
    pub fn reply_to(&mut self, serial: u32) -> io::Result<Message> {
        for _ in 0..=MAX_SKIPPED {
            let m = self.read()?;
            if matches!(m.kind, METHOD_RETURN | ERROR) && m.reply_serial == Some(serial) {
                return Ok(m);
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "no reply among the messages that came"))
    }
}

/// A header field sent: a string of type `s`, `o` or `g`, or a number.
/// (Marshalled by hand: zvariant writes a signature of several types with
/// parentheses, which makes it one struct's.)
enum Field<'a> {
    Text(u8, u8, &'a str),
    Number(u8, u32),
}

impl Field<'_> {
    /// Appends the field, a `(yv)` struct, little-endian.
    fn marshal(&self, out: &mut Vec<u8>) {
        out.resize(out.len().next_multiple_of(8), 0);
        let (code, kind) = match *self {
            Field::Text(code, kind, _) => (code, kind),
            Field::Number(code, _) => (code, b'u'),
        };
        out.extend_from_slice(&[code, 1, kind, 0]);
        match *self {
            Field::Text(_, b'g', text) => out.push(text.len() as u8),
            Field::Text(_, _, text) => out.extend_from_slice(&(text.len() as u32).to_le_bytes()),
            Field::Number(_, n) => return out.extend_from_slice(&n.to_le_bytes()),
        }
        if let Field::Text(_, _, text) = *self {
            out.extend_from_slice(text.as_bytes());
            out.push(0);
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn truncated(s: &str) -> String {
    crate::core::escape::Escaped(&s.chars().take(80).collect::<String>()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::new(a, Instant::now() + Duration::from_secs(5)).unwrap(), b)
    }

    #[test]
    fn a_call_and_its_reply_round_trip_past_other_messages() {
        let (mut client, server) = pair();
        let mut server = Conn::new(server, Instant::now() + Duration::from_secs(5)).unwrap();
        let serial = client.call("org.x", "/org/x", "org.x.M", "Attach", &("u.scope", "", vec![8u32, 9])).unwrap();
        let call = server.read().unwrap();
        assert_eq!((call.kind, call.member.as_deref(), call.signature.as_str()), (METHOD_CALL, Some("Attach"), "ssau"));
        assert_eq!(call.body::<(String, String, Vec<u32>)>().unwrap(), ("u.scope".into(), String::new(), vec![8, 9]));
        server.reply(serial + 100, None, &("other",)).unwrap();
        server.reply(serial, Some("org.x.Error.Nope"), &("no",)).unwrap();
        let reply = client.reply_to(serial).unwrap();
        assert_eq!((reply.kind, reply.error_name.as_deref()), (ERROR, Some("org.x.Error.Nope")));
        assert_eq!(reply.body::<(String,)>().unwrap().0, "no");
    }

    #[test]
    fn the_body_signature_is_its_arguments_not_one_struct() {
        let (mut client, mut raw) = pair();
        client.call("org.x", "/org/x", "org.x.M", "Start", &("a", 1u32)).unwrap();
        let mut buf = vec![0u8; 512];
        let n = raw.read(&mut buf).unwrap();
        let field = b"\x08\x01g\x00\x02su\x00";
        assert!(buf[..n].windows(field.len()).any(|w| w == field), "{:?}", &buf[..n]);
    }

    #[test]
    fn hostile_lengths_lines_and_bytes_are_refused_without_reading_on() {
        let (mut client, mut server) = pair();
        // A header that claims a gigabyte of body.
        let mut fixed = *b"l\x02\x01\x01\0\0\0\x40\x01\0\0\0\0\0\0\0";
        server.write_all(&fixed).unwrap();
        let e = client.read().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        fixed[0] = b'x';
        let (mut client, mut server) = pair();
        server.write_all(&fixed).unwrap();
        assert_eq!(client.read().unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A handshake refused, and one that never ends its line.
        let (mut client, mut server) = pair();
        server.write_all(b"REJECTED EXTERNAL\r\n").unwrap();
        assert_eq!(client.authenticate().unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let (mut client, mut server) = pair();
        server.write_all(&[b'O'; MAX_AUTH_LINE + 10]).unwrap();
        assert_eq!(client.authenticate().unwrap_err().kind(), io::ErrorKind::InvalidData);
        // Silence: the deadline.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut client = Conn::new(a, Instant::now() + Duration::from_millis(100)).unwrap();
        let t = Instant::now();
        assert_eq!(client.read().unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
