//! A stored response and its binary encoding in shared data.
//!
//! Layout (little endian): version u8, stored_at u64, fresh_seconds u32, stale_seconds u32,
//! status u16, header count u16, then per header (name len u16, value len u32, name, value),
//! then the body. Decoding checks every length: a corrupt value reads as a miss.

const VERSION: u8 = 1;

/// A cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it was stored (Unix seconds).
    pub stored_at: u64,
    /// Seconds it stays fresh.
    pub fresh_seconds: u32,
    /// Seconds past freshness it may answer when the upstream fails.
    pub stale_seconds: u32,
    /// HTTP status.
    pub status: u16,
    /// End-to-end response headers (no framing or hop-by-hop headers).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// How usable an entry is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Answer from cache.
    Fresh,
    /// Too old to answer, but may stand in for a failed upstream.
    Stale,
    /// Too old for anything: delete it.
    Expired,
}

impl Entry {
    /// Seconds since the entry was stored.
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at)
    }

    /// Freshness at `now`.
    pub fn freshness(&self, now: u64) -> Freshness {
        let age = self.age(now);
        let fresh = u64::from(self.fresh_seconds);
        if age < fresh {
            Freshness::Fresh
        } else if age < fresh + u64::from(self.stale_seconds) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(21 + headers_len + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        out.extend_from_slice(&self.fresh_seconds.to_le_bytes());
        out.extend_from_slice(&self.stale_seconds.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u16).to_le_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes an entry; `None` for anything malformed (or an empty, deleted value).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.take(1)?[0] != VERSION {
            return None;
        }
        let stored_at = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let fresh_seconds = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
        let stale_seconds = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
        let status = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
        let count = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name_len = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
            let value_len = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
            let name = String::from_utf8(reader.take(usize::from(name_len))?.to_vec()).ok()?;
            let value = String::from_utf8(reader.take(value_len as usize)?.to_vec()).ok()?;
            headers.push((name, value));
        }
        Some(Self {
            stored_at,
            fresh_seconds,
            stale_seconds,
            status,
            headers,
            body: reader.0.to_vec(),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            stored_at: 1000,
            fresh_seconds: 60,
            stale_seconds: 30,
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"answer\": 42}".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_rejects_corruption() {
        let bytes = entry().encode();
        assert_eq!(Entry::decode(&bytes), Some(entry()));
        for cut in [0, 1, 10, 21, 25] {
            assert_eq!(Entry::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert_eq!(Entry::decode(&wrong_version), None);
        let mut huge_header = bytes;
        huge_header[23..27].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Entry::decode(&huge_header), None);
    }

    #[test]
    fn freshness_follows_age() {
        let e = entry();
        assert_eq!(e.freshness(1059), Freshness::Fresh);
        assert_eq!(e.freshness(1060), Freshness::Stale);
        assert_eq!(e.freshness(1090), Freshness::Expired);
        assert_eq!(e.age(900), 0);
    }
}
