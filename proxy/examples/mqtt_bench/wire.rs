//! The few MQTT 3.1.1 packets the load generator needs, written and read by hand over a
//! tokio `TcpStream`. A client library costs a task, channels and a copy per message;
//! with 1 000 subscribers or 50 000 idle connections that cost would be the generator's,
//! measured as if it were the broker's.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const SUBACK: u8 = 0x90;

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        // `len % 128` always fits; the cast cannot truncate.
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, protocol level 4, clean session, no will, no credentials.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    string("MQTT", &mut body);
    body.push(4);
    body.push(0x02);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(client_id, &mut body);
    let mut out = vec![0x10];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

pub fn subscribe_packet(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    string(filter, &mut body);
    body.push(qos);
    let mut out = vec![0x82];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Appends a PUBLISH; the payload is `payload_len` bytes of which the caller fills the
/// first ones (a timestamp) through the returned offset.
pub fn publish(topic: &str, qos: u8, packet_id: u16, payload_len: usize, out: &mut Vec<u8>) -> usize {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.push(PUBLISH | (qos << 1));
    remaining_length(2 + topic.len() + id_len + payload_len, out);
    string(topic, out);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    let payload_at = out.len();
    out.resize(payload_at + payload_len, b'x');
    payload_at
}

pub fn puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[PUBACK, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// A whole packet at the front of `buf`: (first byte, header length, total length).
pub fn frame(buf: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else { return Ok(None) };
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            return Ok((buf.len() >= header + len).then_some((first, header, header + len)));
        }
    }
    bail!("malformed remaining length")
}

/// A PUBLISH body: (packet id if QoS > 0, payload).
pub fn publish_body(first: u8, body: &[u8]) -> anyhow::Result<(Option<u16>, &[u8])> {
    let topic_len = usize::from(u16::from_be_bytes([
        *body.first().context("short PUBLISH")?,
        *body.get(1).context("short PUBLISH")?,
    ]));
    let mut at = 2 + topic_len;
    let mut packet_id = None;
    if first & 0x06 != 0 {
        let id = body.get(at..at + 2).context("short PUBLISH")?;
        packet_id = Some(u16::from_be_bytes([id[0], id[1]]));
        at += 2;
    }
    Ok((packet_id, body.get(at..).context("short PUBLISH")?))
}

/// Opens a TCP connection from `source` (port chosen by the kernel: bound before connect,
/// so each source address has its own ephemeral port range) and completes CONNECT /
/// CONNACK.
pub async fn connect(
    broker: SocketAddr,
    source: Option<Ipv4Addr>,
    client_id: &str,
    keep_alive: u16,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .with_context(|| format!("bind {source}"))?;
    }
    let mut stream = socket
        .connect(broker)
        .await
        .with_context(|| format!("connect {broker}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    stream
        .write_all(&connect_packet(client_id, keep_alive))
        .await
        .context("write CONNECT")?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.context("read CONNACK")?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNACK refused: {connack:02x?}");
    }
    Ok(stream)
}

/// SUBSCRIBE and wait for its SUBACK; bytes read past the SUBACK stay in `buf`.
pub async fn subscribe(stream: &mut TcpStream, buf: &mut BytesMut, filter: &str, qos: u8) -> anyhow::Result<()> {
    stream
        .write_all(&subscribe_packet(1, filter, qos))
        .await
        .context("write SUBSCRIBE")?;
    loop {
        while let Some((first, header, total)) = frame(buf)? {
            let packet = buf.split_to(total);
            if first & 0xf0 == SUBACK {
                if packet.get(header + 2).is_none_or(|&code| code >= 0x80) {
                    bail!("SUBACK refused: {:02x?}", &packet[..]);
                }
                return Ok(());
            }
        }
        if stream.read_buf(buf).await.context("read SUBACK")? == 0 {
            bail!("connection closed before SUBACK");
        }
    }
}
