//! The test's own HTTP server on 127.0.0.1: it serves the test page and its configuration to
//! the browser and hands what the page POSTs back to the test. One thread, one request per
//! connection (`Connection: close`), every read bounded; stopped and joined when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the page sent: a progress line (`POST /log`) or its outcome (`POST /result`).
pub enum Posted {
    Log(String),
    Result(String),
}

pub struct PageServer {
    pub addr: SocketAddr,
    pub posted: Receiver<Posted>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The largest body a page may POST; more is refused (the page sends a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

impl PageServer {
    /// Serves `page` at `/` and `config` (JavaScript) at `/config.js`.
    pub fn start(page: &'static str, config: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        let addr = listener.local_addr().expect("page server address");
        // Non-blocking accept, so that the thread sees `stop` within a poll interval.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, posted) = mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, page, &config, &tx),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PageServer {
            addr,
            posted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request; a broken or slow request is dropped (the page would time out).
fn serve(stream: TcpStream, page: &str, config: &str, posted: &Sender<Posted>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    content_length = value.trim().parse().unwrap_or(usize::MAX);
                }
            }
        }
    }
    let mut target = request_line.split_whitespace();
    let (method, path) = (target.next().unwrap_or(""), target.next().unwrap_or(""));
    let mut body = Vec::new();
    if method == "POST" {
        if content_length > MAX_BODY {
            respond(&stream, "413 Content Too Large", "text/plain", "");
            return;
        }
        body.resize(content_length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    match (method, path) {
        ("GET", "/") => respond(&stream, "200 OK", "text/html; charset=utf-8", page),
        ("GET", "/config.js") => respond(&stream, "200 OK", "text/javascript", config),
        ("POST", "/log") => {
            let _ = posted.send(Posted::Log(body));
            respond(&stream, "204 No Content", "text/plain", "");
        }
        ("POST", "/result") => {
            let _ = posted.send(Posted::Result(body));
            respond(&stream, "204 No Content", "text/plain", "");
        }
        _ => respond(&stream, "404 Not Found", "text/plain", ""),
    }
}

fn respond(mut stream: &TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
