//! Waking a thread out of a blocking socket read at once (the realtime reader at shutdown):
//! the read side of the registered socket is shut down, so the read returns now instead of
//! when its read timeout ends.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Wakes the reader out of a blocking read at once (shutdown): the read side of its socket is
/// shut down, so the read returns instead of waiting out its tick. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<(AtomicBool, Mutex<Option<TcpStream>>)>);

impl Interrupt {
    /// Ends the current read now and every later connection as soon as it is made.
    pub fn fire(&self) {
        let (fired, slot) = &*self.0;
        fired.store(true, Ordering::SeqCst);
        if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    }

    pub fn fired(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// The socket the reader blocks on (None: the connection is over).
    pub(super) fn watch(&self, s: Option<TcpStream>) {
        let (fired, slot) = &*self.0;
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        *g = s;
        // Fired before the socket was registered: shut it down here.
        if fired.load(Ordering::SeqCst) {
            if let Some(s) = g.as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn firing_wakes_a_read_without_timeout_and_later_sockets_at_registration() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, _) = l.accept().unwrap();
        let i = Interrupt::default();
        i.watch(client.try_clone().ok());
        // No read timeout and a silent peer: only the interrupt can end this read.
        let t = std::thread::spawn(move || {
            let mut c = client;
            c.read(&mut [0u8; 16]).map_err(|e| e.kind())
        });
        i.fire();
        assert_eq!(t.join().unwrap(), Ok(0), "the read ends as at EOF");
        assert!(i.fired());
        // A socket registered after the fire is shut at once.
        let late = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s2, _) = l.accept().unwrap();
        i.watch(late.try_clone().ok());
        assert_eq!((&late).read(&mut [0u8; 16]).unwrap(), 0);
    }
}
