//! Server side of RFC 6455 framing: the handshake accept key, reading client frames (masked,
//! possibly fragmented) and encoding unmasked server frames. Written by hand (rather than
//! through tungstenite's `WebSocket`) so that one thread can block reading while others write
//! whole frames to a cloned socket without interleaving.

use base64::Engine;
use std::io::{self, Read};
use std::net::TcpStream;

/// Largest message accepted from a client (close 1009 beyond).
pub const MAX_MESSAGE: usize = 1024 * 1024;

pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close,
}

pub enum ReadError {
    Io(io::Error),
    /// Protocol violation: close with this code.
    Protocol(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub struct FrameReader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    /// `leftover`: bytes read past the HTTP head (a client may send its first frame at once).
    pub fn new(stream: TcpStream, leftover: Vec<u8>) -> FrameReader {
        FrameReader {
            stream,
            buf: leftover,
            pos: 0,
        }
    }

    fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() - self.pos < n {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let k = self.stream.read(&mut chunk)?;
            if k == 0 {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed",
                )));
            }
            self.buf.extend_from_slice(&chunk[..k]);
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        self.need(n)?;
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    /// Reads one frame: (fin, opcode, payload).
    fn frame(&mut self) -> Result<(bool, u8, Vec<u8>), ReadError> {
        let h = self.take(2)?;
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(ReadError::Protocol(
                1002,
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let b = self.take(2)?;
            len = u16::from_be_bytes([b[0], b[1]]) as u64;
        } else if len == 127 {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            len = u64::from_be_bytes(a);
        }
        if len > MAX_MESSAGE as u64 {
            return Err(ReadError::Protocol(1009, "message too big"));
        }
        let mask = if masked { Some(self.take(4)?) } else { None };
        let mut payload = self.take(len as usize)?;
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok((fin, opcode, payload))
    }

    /// Reads one complete message, reassembling fragments.
    pub fn read_message(&mut self) -> Result<Incoming, ReadError> {
        let mut assembling: Option<(u8, Vec<u8>)> = None;
        loop {
            let (fin, opcode, payload) = self.frame()?;
            match opcode {
                0x8 => return Ok(Incoming::Close),
                0x9 => return Ok(Incoming::Ping(payload)),
                0xA => return Ok(Incoming::Pong),
                0x1 | 0x2 => {
                    if assembling.is_some() {
                        return Err(ReadError::Protocol(
                            1002,
                            "new data frame inside a fragmented message",
                        ));
                    }
                    if fin {
                        return finish(opcode, payload);
                    }
                    assembling = Some((opcode, payload));
                }
                0x0 => {
                    let (op, mut data) = match assembling.take() {
                        Some(x) => x,
                        None => {
                            return Err(ReadError::Protocol(
                                1002,
                                "continuation frame without a start",
                            ))
                        }
                    };
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err(ReadError::Protocol(1009, "message too big"));
                    }
                    if fin {
                        return finish(op, data);
                    }
                    assembling = Some((op, data));
                }
                _ => return Err(ReadError::Protocol(1002, "unknown opcode")),
            }
        }
    }
}

fn finish(opcode: u8, data: Vec<u8>) -> Result<Incoming, ReadError> {
    if opcode == 0x2 {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| ReadError::Protocol(1007, "text frame is not UTF-8"))
}

/// One unmasked server frame.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    encode(0x8, &p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc_example_key() {
        assert_eq!(
            super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
