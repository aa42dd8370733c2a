//! Tests only: HTTP servers on loopback playing gateways, good, hostile or stalled.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, mpsc};

use cid::Version;
use ipfs_accelerate_protocol::Block;
use multihash_codetable::Code;

pub(super) fn block(data: &[u8]) -> Block {
    Block::from_data(Version::V1, 0x55, Code::Sha2_256, data.to_vec()).unwrap()
}

/// A server on loopback answering each connection, on a thread of its own, with
/// `answer` (after reading the request's head), which gets the request line. Returns
/// its base URL, and the request lines as they arrive.
pub(super) fn serve(
    answer: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (tx, answer) = (tx.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let _ = tx.send(line.trim().to_owned());
                answer(&line, &mut stream);
            });
        }
    });
    (base, rx)
}

/// Writes a whole answer with `body` and closes the connection.
pub(super) fn reply(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/vnd.ipld.raw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}
