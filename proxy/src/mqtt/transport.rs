//! Packets over a byte stream, holding no buffer while the connection is idle.
//!
//! `tokio_util`'s `Framed` keeps an 8 KiB read buffer and an 8 KiB write buffer for the
//! whole life of a connection. Most MQTT connections are idle devices that send a few bytes
//! a minute, so those buffers were most of what an idle connection cost (issue 9). This
//! transport reads into a buffer on the stack and keeps heap bytes only while a packet is
//! incomplete; it encodes into a heap buffer that is given back once flushed. An idle
//! connection between packets owns no buffer at all; one busy connection holds what its
//! packets in flight need, as before.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures::{Sink, Stream};
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::v5::Packet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

use super::codec::MqttCodec;

/// Bytes read per call while no packet is pending (on the stack, not held).
const READ_CHUNK: usize = 8 * 1024;
/// Bytes reserved per read while a packet is pending (a large PUBLISH arrives in several).
const READ_RESERVE: usize = 8 * 1024;
/// Encoded bytes queued before `poll_ready` writes them out first (the backpressure point).
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A stream of decoded packets and a sink of packets to encode, over `S`.
pub struct Transport<S> {
    stream: S,
    codec: MqttCodec,
    /// Bytes of a packet not complete yet; empty (and unallocated) between packets.
    read_buf: BytesMut,
    /// Encoded packets not written yet; empty (and unallocated) once flushed.
    write_buf: BytesMut,
    eof: bool,
    /// A decode or read error was returned: the stream ends.
    failed: bool,
}

impl<S> Transport<S> {
    pub fn new(stream: S, codec: MqttCodec) -> Self {
        Self {
            stream,
            codec,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            eof: false,
            failed: false,
        }
    }

    pub fn codec(&self) -> &MqttCodec {
        &self.codec
    }

    pub fn codec_mut(&mut self) -> &mut MqttCodec {
        &mut self.codec
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Whether nothing is pending either way and the stream has not ended.
    pub fn is_idle(&self) -> bool {
        self.read_buf.is_empty() && self.write_buf.is_empty() && !self.eof && !self.failed
    }

    /// The stream and the codec, when nothing is pending either way and the stream has not
    /// ended: all a resting connection keeps of its transport.
    pub fn into_rest(self) -> Result<(S, MqttCodec), Self> {
        if self.is_idle() {
            Ok((self.stream, self.codec))
        } else {
            Err(self)
        }
    }

    /// Heap bytes the transport holds (for tests and the idle-cost figures).
    pub fn buffered_capacity(&self) -> usize {
        self.read_buf.capacity() + self.write_buf.capacity()
    }

    /// Gives back the read buffer once nothing in it is pending. A decoded PUBLISH may
    /// still share the allocation (its payload); it is freed when that message is.
    fn release_read_buf(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + Unpin> Transport<S> {
    /// Reads what the stream has: into the pending packet's buffer when there is one, else
    /// through a stack buffer so that waiting costs no heap. `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.is_empty() {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            self.read_buf.extend_from_slice(filled);
            Poll::Ready(Ok(filled.len()))
        } else {
            self.read_buf.reserve(READ_RESERVE);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.read_buf
            ))?;
            Poll::Ready(Ok(n))
        }
    }
}

impl<S: AsyncRead + Unpin> Stream for Transport<S> {
    type Item = Result<Packet, DecodeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if !this.read_buf.is_empty() {
                match this.codec.decode(&mut this.read_buf) {
                    Ok(Some(packet)) => {
                        this.release_read_buf();
                        return Poll::Ready(Some(Ok(packet)));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        this.failed = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
            if this.eof {
                return if this.read_buf.is_empty() {
                    Poll::Ready(None)
                } else {
                    // The peer closed in the middle of a packet.
                    this.failed = true;
                    Poll::Ready(Some(Err(DecodeError::from(io::Error::from(
                        io::ErrorKind::UnexpectedEof,
                    )))))
                };
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(error) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(DecodeError::from(error))));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Sink<Packet> for Transport<S> {
    type Error = EncodeError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), EncodeError>> {
        if self.write_buf.len() >= WRITE_HIGH_WATER {
            ready!(self.poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, packet: Packet) -> Result<(), EncodeError> {
        let this = self.get_mut();
        this.codec.encode(packet, &mut this.write_buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), EncodeError>> {
        let this = self.get_mut();
        while !this.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &this.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            this.write_buf.advance(n);
        }
        if this.write_buf.capacity() > 0 {
            this.write_buf = BytesMut::new();
        }
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), EncodeError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        ready!(Pin::new(&mut self.get_mut().stream).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use rmqtt_codec::v5::{Disconnect, DisconnectReasonCode};
    use tokio::io::AsyncWriteExt;

    use super::*;

    const CONNECT_311: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x00\x00\x02id";
    const PINGREQ: &[u8] = b"\xc0\x00";

    fn transport(stream: tokio::io::DuplexStream) -> Transport<tokio::io::DuplexStream> {
        Transport::new(stream, MqttCodec::new(1 << 20))
    }

    #[tokio::test]
    async fn between_packets_no_buffer_is_held() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut transport = transport(ours);
        theirs.write_all(CONNECT_311).await.expect("write");
        let connect = transport.next().await.expect("packet").expect("decoded");
        assert!(matches!(connect, Packet::Connect(_)));
        assert_eq!(transport.buffered_capacity(), 0, "after a whole packet");
        transport.codec_mut().connect_accepted();
        transport.send(Packet::PingResponse).await.expect("sent");
        assert_eq!(transport.buffered_capacity(), 0, "after a flush");
    }

    #[tokio::test]
    async fn a_packet_split_across_reads_is_held_until_whole_then_released() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut transport = transport(ours);
        theirs.write_all(&CONNECT_311[..5]).await.expect("write");
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), transport.next()).await;
        assert!(pending.is_err(), "no packet from 5 bytes");
        assert!(transport.buffered_capacity() > 0, "the partial packet is kept");
        theirs.write_all(&CONNECT_311[5..]).await.expect("write");
        theirs.write_all(PINGREQ).await.expect("write");
        assert!(matches!(transport.next().await, Some(Ok(Packet::Connect(_)))));
        assert!(matches!(transport.next().await, Some(Ok(Packet::PingRequest))));
        assert_eq!(transport.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn many_packets_in_one_read_all_decode() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut transport = transport(ours);
        let mut bytes = CONNECT_311.to_vec();
        for _ in 0..1000 {
            bytes.extend_from_slice(PINGREQ);
        }
        theirs.write_all(&bytes).await.expect("write");
        drop(theirs);
        assert!(matches!(transport.next().await, Some(Ok(Packet::Connect(_)))));
        let mut pings = 0;
        while let Some(packet) = transport.next().await {
            assert!(matches!(packet, Ok(Packet::PingRequest)), "{packet:?}");
            pings += 1;
        }
        assert_eq!(pings, 1000);
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_packet_is_an_error_then_the_end() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut transport = transport(ours);
        theirs.write_all(&CONNECT_311[..7]).await.expect("write");
        drop(theirs);
        assert!(matches!(transport.next().await, Some(Err(_))));
        assert!(transport.next().await.is_none());
    }

    #[tokio::test]
    async fn a_large_write_backlog_is_written_out_before_more_is_queued() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut transport = transport(ours);
        let mut connect = BytesMut::from(&b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x02id"[..]);
        // Detect the version (5.0) through a decoded CONNECT.
        let _ = transport.codec_mut().decode(&mut connect);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = tokio::io::copy(&mut theirs, &mut sink).await;
            sink.len()
        });
        for _ in 0..20_000 {
            transport
                .feed(Packet::Disconnect(Disconnect::new(
                    DisconnectReasonCode::NormalDisconnection,
                )))
                .await
                .expect("fed");
            assert!(transport.write_buf.len() < WRITE_HIGH_WATER + 64, "bounded backlog");
        }
        transport.close().await.expect("closed");
        let written = reader.await.expect("reader");
        assert!(written >= 20_000 * 2, "{written}");
    }
}
