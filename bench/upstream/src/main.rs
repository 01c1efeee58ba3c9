//! `bench-upstream <port> [chat]`: answers every HTTP/1.1 request with a fixed small 200 (with
//! `chat`, a chat completion without `usage`), keeping connections alive. Single-threaded on
//! purpose: the benchmark gives the proxy the other core. Request bodies (`content-length` or
//! chunked) are read and dropped.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{\"status\":\"ok\"}\n";
const CHAT_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"A shot takes 25 to 30 seconds."},"finish_reason":"stop"}]}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: bench-upstream <port> [chat]");
    let response: &'static [u8] = if std::env::args().nth(2).as_deref() == Some("chat") {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            CHAT_BODY.len()
        );
        Box::leak((head + CHAT_BODY).into_bytes().into_boxed_slice())
    } else {
        RESPONSE
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, response));
    }
}

async fn serve(mut stream: TcpStream, response: &'static [u8]) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        // Answer each complete request (pipelining included).
        while let Some(length) = request_length(&buffer) {
            buffer.drain(..length);
            if stream.write_all(response).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the first complete request in `buffer` (head and body), if it is all there.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_owned)
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = buffer[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&buffer[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2 + size + 2;
            if buffer.len() < at {
                return None;
            }
            if size == 0 {
                return Some(at);
            }
        }
    }
    let body = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (buffer.len() >= head_end + body).then_some(head_end + body)
}
