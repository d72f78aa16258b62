//! Small builders shared by the tests that craft desired states and packets by hand.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `TC_ACT_OK`: the action of a packet the programs let through.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`: the action of a packet the programs drop.
pub const TC_ACT_SHOT: i32 = 2;

/// An address written in a test; panics on a typo.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Labels from `key, value` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
