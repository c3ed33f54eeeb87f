//! Counts gRPC messages in a body as it passes: each message is a 5-byte
//! prefix (compressed flag, big-endian length) and that many bytes, split
//! across data frames however the sender chose.

/// Where a body's reader stands in its message framing.
#[derive(Debug, Default)]
pub struct MessageCounter {
    /// Bytes of the current prefix seen so far (0 to 4).
    prefix: [u8; 5],
    prefix_seen: usize,
    /// Payload bytes of the current message still to come.
    payload_left: u64,
}

impl MessageCounter {
    /// Reads `chunk` and returns how many messages began in it.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut started = 0;
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let skip =
                    usize::try_from(self.payload_left).map_or(chunk.len(), |left| left.min(chunk.len()));
                chunk = &chunk[skip..];
                self.payload_left -= u64::try_from(skip).unwrap_or(u64::MAX);
                continue;
            }
            let take = (5 - self.prefix_seen).min(chunk.len());
            self.prefix[self.prefix_seen..self.prefix_seen + take].copy_from_slice(&chunk[..take]);
            self.prefix_seen += take;
            chunk = &chunk[take..];
            if self.prefix_seen == 5 {
                started += 1;
                self.prefix_seen = 0;
                let [_, a, b, c, d] = self.prefix;
                self.payload_left = u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::MessageCounter;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }

    #[test]
    fn counts_messages_however_the_frames_split_them() {
        let mut body = message(b"hello");
        body.extend(message(b""));
        body.extend(message(&[7; 300]));
        for split in 1..body.len() {
            let mut counter = MessageCounter::default();
            let counted: u64 = body.chunks(split).map(|chunk| counter.feed(chunk)).sum();
            assert_eq!(counted, 3, "split every {split} bytes");
        }
    }
}
