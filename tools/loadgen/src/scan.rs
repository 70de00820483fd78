//! Reads a gRPC response body as it arrives, one top-level protobuf field at a time, so a
//! simulated proxy holds at most one resource of a response, never the whole message: 10 000
//! clients each receiving a 2 MB first sync must not hold 20 GB (tonic's client decoder keeps
//! a buffer the size of the largest message it read).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;

/// What to do with a length-delimited field once its number and length are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Hand the field's bytes to [`Fields::captured`].
    Capture,
    /// Drop the bytes as they arrive.
    Skip,
}

/// The receiver of one gRPC stream's messages, field by field.
pub trait Fields {
    /// What the sink makes of one whole message.
    type Message;
    /// A message of `len` bytes begins.
    fn start(&mut self, len: usize);
    /// A length-delimited field: capture it or skip it.
    fn field(&mut self, number: u32, len: usize) -> Take;
    fn captured(&mut self, number: u32, bytes: Bytes);
    /// The message ended; errors end the stream.
    fn end(&mut self) -> anyhow::Result<Self::Message>;
}

#[derive(Debug)]
enum State {
    /// The 5-byte gRPC message prefix.
    Prefix,
    /// A field's key (and length) within `remaining` bytes of message.
    Key {
        remaining: usize,
    },
    Capture {
        number: u32,
        len: usize,
        remaining: usize,
    },
    Skip {
        len: usize,
        remaining: usize,
    },
}

/// The push parser: feed it DATA frames as they come.
pub struct Scanner {
    buf: BytesMut,
    state: State,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            buf: BytesMut::new(),
            state: State::Prefix,
        }
    }
}

/// A varint at the front of `buf`: its value and length, or `None` when incomplete.
fn varint(buf: &[u8]) -> anyhow::Result<Option<(u64, usize)>> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        anyhow::bail!("malformed varint in response");
    }
    Ok(None)
}

impl Scanner {
    /// Reads `data`; each message it completes goes to the back of `done`.
    pub fn feed<F: Fields>(
        &mut self,
        data: Bytes,
        sink: &mut F,
        done: &mut VecDeque<F::Message>,
    ) -> anyhow::Result<()> {
        self.buf.extend_from_slice(&data);
        loop {
            match self.state {
                State::Prefix => {
                    if self.buf.len() < 5 {
                        break;
                    }
                    anyhow::ensure!(self.buf[0] == 0, "compressed gRPC message");
                    self.buf.advance(1);
                    let len = self.buf.get_u32() as usize;
                    sink.start(len);
                    self.state = State::Key { remaining: len };
                }
                State::Key { remaining: 0 } => {
                    done.push_back(sink.end()?);
                    self.state = State::Prefix;
                }
                State::Key { remaining } => {
                    let Some((key, key_len)) = varint(&self.buf)? else {
                        break;
                    };
                    let number = (key >> 3) as u32;
                    let (skip, header) = match key & 7 {
                        0 => match varint(&self.buf[key_len..])? {
                            Some((_, n)) => (0, key_len + n),
                            None => break,
                        },
                        1 => (8, key_len),
                        5 => (4, key_len),
                        2 => match varint(&self.buf[key_len..])? {
                            Some((len, n)) => {
                                let len = len as usize;
                                anyhow::ensure!(
                                    key_len + n + len <= remaining,
                                    "field {number} overruns its message"
                                );
                                self.buf.advance(key_len + n);
                                let remaining = remaining - key_len - n;
                                self.state = match sink.field(number, len) {
                                    Take::Capture => State::Capture {
                                        number,
                                        len,
                                        remaining,
                                    },
                                    Take::Skip => State::Skip { len, remaining },
                                };
                                continue;
                            }
                            None => break,
                        },
                        wire => anyhow::bail!("field {number}: wire type {wire} not expected"),
                    };
                    anyhow::ensure!(header + skip <= remaining, "field {number} overruns");
                    self.buf.advance(header);
                    self.state = State::Skip {
                        len: skip,
                        remaining: remaining - header,
                    };
                }
                State::Capture {
                    number,
                    len,
                    remaining,
                } => {
                    if self.buf.len() < len {
                        break;
                    }
                    sink.captured(number, self.buf.split_to(len).freeze());
                    self.state = State::Key {
                        remaining: remaining - len,
                    };
                }
                State::Skip { len, remaining } => {
                    let n = len.min(self.buf.len());
                    self.buf.advance(n);
                    if n < len {
                        self.state = State::Skip {
                            len: len - n,
                            remaining: remaining - n,
                        };
                        break;
                    }
                    self.state = State::Key {
                        remaining: remaining - n,
                    };
                }
            }
        }
        if self.buf.is_empty() {
            // Idle clients keep no buffer (a captured field may still share the old one).
            self.buf = BytesMut::new();
        }
        Ok(())
    }
}

/// A length-delimited field's bytes within a small message (a captured resource), by number.
pub fn fields(mut msg: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        loop {
            let (key, n) = varint(msg).ok()??;
            msg = &msg[n..];
            let number = (key >> 3) as u32;
            let skip = match key & 7 {
                0 => varint(msg).ok()??.1,
                1 => 8,
                5 => 4,
                2 => {
                    let (len, n) = varint(msg).ok()??;
                    let end = n.checked_add(len as usize)?;
                    let value = msg.get(n..end)?;
                    msg = &msg[end..];
                    return Some((number, value));
                }
                _ => return None,
            };
            msg = msg.get(skip..)?;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    #[derive(Default)]
    struct Record {
        starts: Vec<usize>,
        captured: Vec<(u32, Vec<u8>)>,
        skipped: Vec<(u32, usize)>,
        ends: usize,
    }

    impl Fields for Record {
        type Message = ();
        fn start(&mut self, len: usize) {
            self.starts.push(len);
        }
        fn field(&mut self, number: u32, len: usize) -> Take {
            if number == 2 && len > 100 {
                self.skipped.push((number, len));
                Take::Skip
            } else {
                Take::Capture
            }
        }
        fn captured(&mut self, number: u32, bytes: Bytes) {
            self.captured.push((number, bytes.to_vec()));
        }
        fn end(&mut self) -> anyhow::Result<()> {
            self.ends += 1;
            Ok(())
        }
    }

    fn message() -> (DiscoveryResponse, Vec<u8>) {
        let resp = DiscoveryResponse {
            version_info: "v7".into(),
            type_url: "t".into(),
            nonce: "n3".into(),
            canary: true,
            resources: vec![
                Any {
                    type_url: "a".into(),
                    value: vec![1; 10],
                },
                Any {
                    type_url: "b".into(),
                    value: vec![2; 300],
                },
            ],
            ..Default::default()
        };
        let body = resp.encode_to_vec();
        let mut framed = vec![0];
        framed.extend((body.len() as u32).to_be_bytes());
        framed.extend(&body);
        (resp, framed)
    }

    #[test]
    fn fields_are_the_same_however_the_body_is_split() {
        let (resp, framed) = message();
        let twice: Vec<u8> = framed.iter().chain(framed.iter()).copied().collect();
        for split in [1, 2, 3, 7, 64, twice.len()] {
            let mut scanner = Scanner::default();
            let mut record = Record::default();
            let mut done = VecDeque::new();
            for chunk in twice.chunks(split) {
                scanner
                    .feed(Bytes::copy_from_slice(chunk), &mut record, &mut done)
                    .unwrap();
            }
            assert_eq!(record.ends, 2, "split {split}");
            assert_eq!(done.len(), 2, "split {split}");
            assert_eq!(record.starts, vec![framed.len() - 5; 2]);
            assert_eq!(
                record.skipped,
                vec![(2, resp.resources[1].encoded_len()); 2]
            );
            let first: Vec<_> = record.captured.iter().take(4).cloned().collect();
            assert_eq!(
                first,
                vec![
                    (1, b"v7".to_vec()),
                    (2, resp.resources[0].encode_to_vec()),
                    (4, b"t".to_vec()),
                    (5, b"n3".to_vec()),
                ],
                "split {split}"
            );
            assert!(scanner.buf.is_empty() && scanner.buf.capacity() == 0);
        }
    }

    #[test]
    fn a_captured_resource_reads_by_field() {
        let any = Any {
            type_url: "x".into(),
            value: vec![9; 3],
        };
        let bytes = any.encode_to_vec();
        let got: Vec<_> = fields(&bytes).collect();
        assert_eq!(got, vec![(1, &b"x"[..]), (2, &[9u8, 9, 9][..])]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut scanner = Scanner::default();
        let mut record = Record::default();
        // A message of 3 bytes whose one field claims 100.
        let bad = Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 100, 0]);
        let mut done = VecDeque::new();
        assert!(scanner.feed(bad, &mut record, &mut done).is_err());
        let mut scanner = Scanner::default();
        assert!(
            scanner
                .feed(Bytes::from_static(&[1, 0, 0, 0, 0]), &mut record, &mut done)
                .is_err(),
            "compressed"
        );
    }
}
