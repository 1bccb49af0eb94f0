//! WebSocket framing (RFC 6455 §5) after the upgrade, as the byte stream MQTT reads.
//!
//! Frame boundaries mean nothing to MQTT (a packet may span frames, a frame may hold
//! several packets), so frames are not collected into messages: [`WsIo`] reads from the
//! socket straight into the caller's buffer, strips the frame headers and unmasks the
//! payload in place, and writes each write as one binary frame. Its state is a few dozen
//! bytes, so an idle WebSocket connection holds no buffer, like a TCP one (tungstenite kept
//! a 128 KiB read buffer and a write buffer per connection). Control frames are answered
//! here: ping with pong, close with close; a text frame or a protocol violation gets a
//! close frame with 1002 and ends the stream with an error.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Queued control frames beyond which further pings are not answered (RFC 6455 §5.5.3
/// allows answering only the latest): a ping flood cannot grow the queue.
const CONTROL_QUEUE_LIMIT: usize = 1024;

/// Why the client's frames end the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A text frame: MQTT travels in binary frames only (MQTT 5.0 §6.0).
    TextFrame,
    /// An unmasked client frame (RFC 6455 §5.1).
    Unmasked,
    /// Reserved bits set without a negotiated extension.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControlFrame,
    /// A continuation frame with no message to continue, or a new message before the
    /// last one ended.
    BadFragmentation,
    /// A 64-bit length with the most significant bit set, or a close frame of one byte.
    BadLength,
}

impl Violation {
    fn reason(self) -> &'static str {
        match self {
            Violation::TextFrame => "MQTT needs binary frames",
            Violation::Unmasked => "client frames must be masked",
            Violation::ReservedBits => "reserved bits set",
            Violation::UnknownOpcode(_) => "unknown opcode",
            Violation::BadControlFrame => "invalid control frame",
            Violation::BadFragmentation => "invalid fragmentation",
            Violation::BadLength => "invalid length",
        }
    }
}

/// A frame header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    length: u64,
}

/// Length of the header that starts with `head` (2 until the second byte is known).
fn header_length(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let extended = match head[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Decodes a whole header (`head.len() == header_length(head)`) of a client frame, given
/// whether a fragmented message is under way.
fn parse_header(head: &[u8], in_message: bool) -> Result<Header, Violation> {
    let (b0, b1) = (head[0], head[1]);
    if b0 & 0x70 != 0 {
        return Err(Violation::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Unmasked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (length, rest) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), &head[4..]),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&head[2..10]);
            let length = u64::from_be_bytes(bytes);
            if length >> 63 != 0 {
                return Err(Violation::BadLength);
            }
            (length, &head[10..])
        }
        short => (u64::from(short), &head[2..]),
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&rest[..4]);
    match opcode {
        OP_TEXT => return Err(Violation::TextFrame),
        OP_BINARY if in_message => return Err(Violation::BadFragmentation),
        OP_CONTINUATION if !in_message => return Err(Violation::BadFragmentation),
        OP_CLOSE | OP_PING | OP_PONG if !fin || length > 125 => return Err(Violation::BadControlFrame),
        OP_CLOSE if length == 1 => return Err(Violation::BadLength),
        OP_BINARY | OP_CONTINUATION | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(Violation::UnknownOpcode(other)),
    }
    Ok(Header {
        fin,
        opcode,
        mask,
        length,
    })
}

/// A server frame's header (unmasked) for `length` bytes.
fn server_header(opcode: u8, length: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if length < 126 {
        out[1] = length as u8;
        2
    } else if let Ok(short) = u16::try_from(length) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(length as u64).to_be_bytes());
        10
    }
}

/// A whole server control frame.
fn control_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; 10];
    let n = server_header(opcode, payload.len(), &mut head);
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// The frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct Reading {
    header: Header,
    /// Payload bytes read so far (the position in the mask).
    done: u64,
}

/// What reading the client's frames has found that needs an answer.
#[derive(Default)]
struct Answers {
    /// Whole control frames to send (pongs, the close reply), before the next data frame.
    frames: Vec<u8>,
    close_received: bool,
}

/// Client frames, parsed from whatever pieces the socket delivers.
#[derive(Default)]
struct Reader {
    head: [u8; 14],
    head_len: usize,
    frame: Option<Reading>,
    /// A binary message was fragmented and continues.
    in_message: bool,
    /// The payload of the control frame being read (at most 125 bytes).
    control: Vec<u8>,
}

impl Reader {
    /// Takes the bytes the socket delivered in `data`: moves the binary payload, unmasked,
    /// to the front of `data` and returns its length; headers and control frames are
    /// consumed, and what they ask for is added to `answers`. Bytes after a close frame
    /// are ignored (RFC 6455 §5.5.1).
    fn absorb(&mut self, data: &mut [u8], answers: &mut Answers) -> Result<usize, Violation> {
        let (mut read, mut kept) = (0, 0);
        while read < data.len() && !answers.close_received {
            let Some(reading) = &mut self.frame else {
                let need = header_length(&self.head[..self.head_len]);
                let take = (need - self.head_len).min(data.len() - read);
                self.head[self.head_len..self.head_len + take].copy_from_slice(&data[read..read + take]);
                self.head_len += take;
                read += take;
                if self.head_len == header_length(&self.head[..self.head_len]) {
                    let header = parse_header(&self.head[..self.head_len], self.in_message)?;
                    self.head_len = 0;
                    self.frame = Some(Reading { header, done: 0 });
                    self.finish_if_complete(answers);
                }
                continue;
            };
            let left = reading.header.length - reading.done;
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len() - read);
            let mask = reading.header.mask;
            let offset = reading.done as usize;
            if matches!(reading.header.opcode, OP_BINARY | OP_CONTINUATION) {
                // `kept <= read`: moving forward byte by byte never overwrites unread input.
                for i in 0..take {
                    data[kept + i] = data[read + i] ^ mask[(offset + i) & 3];
                }
                kept += take;
            } else {
                self.control.extend(
                    data[read..read + take]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[(offset + i) & 3]),
                );
            }
            reading.done += take as u64;
            read += take;
            self.finish_if_complete(answers);
        }
        Ok(kept)
    }

    /// Ends the current frame if its payload is complete and answers a control frame.
    fn finish_if_complete(&mut self, answers: &mut Answers) {
        let Some(reading) = self.frame else { return };
        if reading.done < reading.header.length {
            return;
        }
        self.frame = None;
        match reading.header.opcode {
            OP_BINARY | OP_CONTINUATION => self.in_message = !reading.header.fin,
            OP_PING if answers.frames.len() < CONTROL_QUEUE_LIMIT => {
                control_frame(OP_PONG, &self.control, &mut answers.frames);
            }
            OP_CLOSE => {
                // Echo the status code (RFC 6455 §5.5.1), without the reason.
                let code = self.control.get(..2).unwrap_or(&[]);
                control_frame(OP_CLOSE, code, &mut answers.frames);
                answers.close_received = true;
            }
            _ => {}
        }
        self.control = Vec::new();
    }
}

/// The data frame being written.
#[derive(Default)]
struct Writer {
    head: [u8; 10],
    head_len: usize,
    head_sent: usize,
    /// Payload bytes of the frame still to write.
    left: usize,
}

impl Writer {
    fn idle(&self) -> bool {
        self.left == 0 && self.head_sent == self.head_len
    }
}

/// Where the read side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The client closed (its close frame was answered): end of stream.
    Closed,
    /// A violation: the close frame (1002) is queued; once sent, every read fails.
    Refused(Violation),
}

/// The byte stream inside a WebSocket connection: binary frames in, one binary frame per
/// write out.
pub struct WsIo<S> {
    inner: S,
    reader: Reader,
    writer: Writer,
    answers: Answers,
    /// Bytes of `answers.frames` already written.
    answers_sent: usize,
    read_state: ReadState,
    /// A close frame is queued or sent: no data frame may follow it.
    close_queued: bool,
}

impl<S> WsIo<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reader: Reader::default(),
            writer: Writer::default(),
            answers: Answers::default(),
            answers_sent: 0,
            read_state: ReadState::Open,
            close_queued: false,
        }
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        if !self.close_queued {
            control_frame(OP_CLOSE, &close_payload(code, reason), &mut self.answers.frames);
            self.close_queued = true;
        }
    }
}

fn violation_error(violation: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {}", violation.reason()))
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
}

impl<S: AsyncWrite + Unpin> WsIo<S> {
    /// Writes the queued control frames, between data frames only.
    fn poll_answers(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.writer.idle() {
            return Poll::Ready(Ok(()));
        }
        while self.answers_sent < self.answers.frames.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.answers.frames[self.answers_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.answers_sent += n;
        }
        if !self.answers.frames.is_empty() {
            self.answers.frames = Vec::new();
            self.answers_sent = 0;
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what is due without waiting for it: a full socket leaves it for the next
    /// read, write or flush.
    fn try_answer(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_answers(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.read_state {
                ReadState::Open => {}
                ReadState::Closed => {
                    this.try_answer(cx)?;
                    return Poll::Ready(Ok(()));
                }
                ReadState::Refused(violation) => {
                    // The connection ends either way; the close frame is a courtesy.
                    let _ = ready!(this.poll_answers(cx));
                    return Poll::Ready(Err(violation_error(violation)));
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.try_answer(cx)?;
            let space = buf.initialize_unfilled();
            let mut raw = ReadBuf::new(space);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                // The socket ended without a close frame: end of stream, as for a TCP FIN.
                return Poll::Ready(Ok(()));
            }
            match this.reader.absorb(&mut space[..n], &mut this.answers) {
                Ok(kept) => {
                    buf.advance(kept);
                    if this.answers.close_received {
                        this.close_queued = true;
                        this.read_state = ReadState::Closed;
                    }
                    if kept > 0 {
                        this.try_answer(cx)?;
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(violation) => {
                    this.queue_close(CLOSE_PROTOCOL_ERROR, violation.reason());
                    this.read_state = ReadState::Refused(violation);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // An empty frame would carry nothing; writers treat 0 as "nothing written yet".
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.writer.idle() {
            ready!(this.poll_answers(cx))?;
            if this.close_queued {
                return Poll::Ready(Err(closed_error()));
            }
            let writer = &mut this.writer;
            writer.head_len = server_header(OP_BINARY, buf.len(), &mut writer.head);
            writer.head_sent = 0;
            writer.left = buf.len();
        }
        let writer = &mut this.writer;
        let payload = &buf[..buf.len().min(writer.left)];
        loop {
            if writer.head_sent < writer.head_len {
                let head = &writer.head[writer.head_sent..writer.head_len];
                let slices = [IoSlice::new(head), IoSlice::new(payload)];
                let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                let of_head = n.min(head.len());
                writer.head_sent += of_head;
                let of_payload = n - of_head;
                if of_payload > 0 {
                    writer.left -= of_payload;
                    return Poll::Ready(Ok(of_payload));
                }
            } else {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, payload))?;
                writer.left -= n;
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answers(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.writer.idle() {
            this.queue_close(CLOSE_NORMAL, "");
            ready!(this.poll_answers(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// WebSocket connections do not rest: the frame decoder is state of the stream's own.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> crate::mqtt::connection::ByteStream for WsIo<S> {}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client frame of `opcode` with `payload`, masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// Feeds `bytes` to a reader in pieces of `piece` bytes; returns the payload kept.
    fn absorb_in_pieces(bytes: &[u8], piece: usize) -> (Result<Vec<u8>, Violation>, Answers) {
        let mut reader = Reader::default();
        let mut answers = Answers::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            let mut data = chunk.to_vec();
            match reader.absorb(&mut data, &mut answers) {
                Ok(kept) => out.extend_from_slice(&data[..kept]),
                Err(violation) => return (Err(violation), answers),
            }
        }
        (Ok(out), answers)
    }

    #[test]
    fn payloads_come_out_unmasked_whatever_the_pieces() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut stream = client_frame(true, OP_BINARY, b"hello");
        stream.extend(client_frame(false, OP_BINARY, &big[..300]));
        stream.extend(client_frame(true, OP_PING, b"p"));
        stream.extend(client_frame(true, OP_CONTINUATION, &big[300..]));
        stream.extend(client_frame(true, OP_BINARY, b""));
        let mut expected = b"hello".to_vec();
        expected.extend_from_slice(&big);
        for piece in [1, 2, 3, 7, 13, 125, 4096, usize::MAX] {
            let (out, answers) = absorb_in_pieces(&stream, piece.min(stream.len()));
            assert_eq!(out.as_deref(), Ok(&expected[..]), "pieces of {piece}");
            assert_eq!(answers.frames, [0x8A, 1, b'p'], "one pong with the ping's payload");
        }
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (client_frame(true, OP_TEXT, b"x"), Violation::TextFrame),
            (vec![0x82, 0x01, b'x'], Violation::Unmasked),
            (client_frame(true, 0x40 | OP_BINARY, b"x"), Violation::ReservedBits),
            (client_frame(true, 0x3, b"x"), Violation::UnknownOpcode(3)),
            (client_frame(false, OP_PING, b"x"), Violation::BadControlFrame),
            (client_frame(true, OP_PING, &[0; 126]), Violation::BadControlFrame),
            (client_frame(true, OP_CONTINUATION, b"x"), Violation::BadFragmentation),
            (client_frame(true, OP_CLOSE, b"x"), Violation::BadLength),
            (
                [
                    client_frame(false, OP_BINARY, b"a"),
                    client_frame(true, OP_BINARY, b"b"),
                ]
                .concat(),
                Violation::BadFragmentation,
            ),
        ];
        for (bytes, violation) in cases {
            assert_eq!(absorb_in_pieces(&bytes, 1).0, Err(violation), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_close_is_echoed_and_nothing_after_it_is_read() {
        let mut stream = client_frame(true, OP_BINARY, b"ab");
        stream.extend(client_frame(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']));
        stream.extend(client_frame(true, OP_BINARY, b"after"));
        let (out, answers) = absorb_in_pieces(&stream, stream.len());
        assert_eq!(out.as_deref(), Ok(&b"ab"[..]));
        assert!(answers.close_received);
        assert_eq!(answers.frames, [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn a_ping_flood_queues_a_bounded_number_of_pongs() {
        let stream: Vec<u8> = (0..10_000)
            .flat_map(|_| client_frame(true, OP_PING, &[7; 100]))
            .collect();
        let (_, answers) = absorb_in_pieces(&stream, 4096);
        assert!(
            answers.frames.len() < CONTROL_QUEUE_LIMIT + 200,
            "{}",
            answers.frames.len()
        );
    }

    #[test]
    fn server_headers() {
        let header = |length| {
            let mut head = [0u8; 10];
            let n = server_header(OP_BINARY, length, &mut head);
            head[..n].to_vec()
        };
        assert_eq!(header(5), [0x82, 5]);
        assert_eq!(header(300), [0x82, 126, 1, 44]);
        assert_eq!(header(70_000), [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[tokio::test]
    async fn bytes_in_frames_in_and_frames_out_over_a_socket() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut io = WsIo::new(ours);
        let mut input = client_frame(true, OP_BINARY, b"mqtt-");
        input.extend(client_frame(true, OP_PING, b"!"));
        input.extend(client_frame(true, OP_BINARY, b"bytes"));
        theirs.write_all(&input).await.expect("write");
        let mut got = vec![0u8; 10];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"mqtt-bytes");
        io.write_all(&[9; 300]).await.expect("write");
        io.flush().await.expect("flush");
        let mut head = [0u8; 3];
        theirs.read_exact(&mut head).await.expect("pong");
        assert_eq!(head, [0x8A, 1, b'!'], "the pong comes first");
        let mut frame = vec![0u8; 4 + 300];
        theirs.read_exact(&mut frame).await.expect("frame");
        assert_eq!(&frame[..4], [0x82, 126, 1, 44]);
        theirs
            .write_all(&client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
            .await
            .expect("close");
        assert_eq!(
            io.read(&mut got).await.expect("eof"),
            0,
            "the client's close ends the stream"
        );
        let mut echo = [0u8; 4];
        theirs.read_exact(&mut echo).await.expect("echo");
        assert_eq!(echo, [0x88, 2, 0x03, 0xE8]);
        assert!(io.write_all(b"late").await.is_err(), "no data after a close frame");
    }

    #[tokio::test]
    async fn a_text_frame_is_answered_with_1002_and_the_read_fails() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut io = WsIo::new(ours);
        theirs
            .write_all(&client_frame(true, OP_TEXT, b"hi"))
            .await
            .expect("write");
        let mut got = [0u8; 8];
        let error = io.read(&mut got).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let mut close = [0u8; 4];
        theirs.read_exact(&mut close).await.expect("close frame");
        assert_eq!(close[..2], [0x88, 2 + "MQTT needs binary frames".len() as u8]);
        assert_eq!(close[2..], 1002u16.to_be_bytes());
    }
}
