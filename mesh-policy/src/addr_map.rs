//! Maps keyed by endpoint address, with a hash that costs a few instructions.
//!
//! The breakers (and the sidecar's connection pool) look an endpoint up several times per
//! request; std's default SipHash costs ~100 instructions per `SocketAddr`, this one ~10. Its
//! keys are the endpoints of the routing table, never a client's input, so SipHash's defence
//! against chosen-key collisions buys nothing here. No I/O, no state beyond the hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

/// A `HashMap` keyed by endpoint address.
pub type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;

/// A `HashMap` whose keys all come from the routing table (service names), with the same
/// hash. A lookup may use a client's input (a request's host), but collisions need chosen
/// keys inserted, and only the table inserts.
pub type TableMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// The multiply-rotate hash of rustc's FxHasher, over the words `SocketAddr` writes (address
/// family, IP bytes, port).
#[derive(Debug, Default, Clone, Copy)]
pub struct AddrHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_endpoints_are_distinct_keys() {
        let mut m: AddrMap<u32> = AddrMap::default();
        for port in 1..=200u16 {
            m.insert(SocketAddr::from(([127, 0, 0, 1], port)), u32::from(port));
            m.insert(SocketAddr::from(([10, 0, 0, (port % 250) as u8], 8080)), 0);
        }
        m.insert("[::1]:80".parse().unwrap(), 7);
        assert_eq!(m[&SocketAddr::from(([127, 0, 0, 1], 42))], 42);
        assert_eq!(m[&"[::1]:80".parse().unwrap()], 7, "IPv6 keys too");
        assert_eq!(m.len(), 200 + 200 + 1, "no two addresses collapse");
    }

    #[test]
    fn the_hash_depends_on_ip_and_port() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<AddrHasher>::default();
        let h = |a: &str| b.hash_one(a.parse::<SocketAddr>().unwrap());
        assert_ne!(h("127.0.0.1:80"), h("127.0.0.1:81"), "port");
        assert_ne!(h("127.0.0.1:80"), h("127.0.0.2:80"), "address");
        assert_eq!(h("127.0.0.1:80"), h("127.0.0.1:80"), "deterministic");
    }
}
