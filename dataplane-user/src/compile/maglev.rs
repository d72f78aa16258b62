//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4): the lookup table of one backend set.
//!
//! Each backend derives a permutation of the table's `M` slots from its name (`offset` and
//! `skip`, `M` prime so that every skip generates all slots); backends then take turns claiming
//! the next free slot of their own permutation until the table is full. Turns make the spread
//! even (every backend gets ⌊M/N⌋ or ⌈M/N⌉ slots), and permutations that depend only on each
//! backend's own name keep most slots in place when the set changes: a connection whose
//! backend stays keeps reaching it even if its conntrack entry is lost.
//!
//! The table is a function of the set alone: members are sorted by name before the turns, and
//! the hashes are written out here (FNV-1a with a murmur3 finaliser), not taken from `std`,
//! whose hasher may change between Rust releases.

use dataplane_abi::maglev::Tier;

/// What a backend's permutation is derived from: its address (16 bytes, network order) and
/// its port (big-endian). Stable across agents and releases.
pub type Name = [u8; 18];

/// A backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Derives the backend's permutation.
    pub name: Name,
    /// What the table stores for the backend's slots (its id, which indexes `WEIR_BE_V2`).
    pub id: u32,
}

impl Member {
    /// The member for the backend at `addr`, `port_h` with id `id`.
    #[must_use]
    pub fn new(addr: dataplane_abi::Addr, port_h: u16, id: u32) -> Self {
        let mut name = [0u8; 18];
        name[..16].copy_from_slice(&addr);
        name[16..].copy_from_slice(&port_h.to_be_bytes());
        Self { name, id }
    }
}

/// A backend set's lookup table, in the tier its size calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Which of the three Maglev maps holds it; `slots.len()` is `tier.slots()`.
    pub tier: Tier,
    /// For each slot, a backend id.
    pub slots: Vec<u32>,
}

impl Table {
    /// The table of `members` in `tier`: `None` for an empty set, which has no table.
    #[must_use]
    pub fn build(members: &[Member], tier: Tier) -> Option<Self> {
        if members.is_empty() {
            return None;
        }
        Some(Self {
            tier,
            slots: populate(members, tier.slots()),
        })
    }
}

/// The Maglev table of `slots` slots (a prime) for `members`, which must not be empty.
fn populate(members: &[Member], slots: usize) -> Vec<u32> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by_key(|m| m.name);
    let mut cursors: Vec<Cursor> = sorted
        .iter()
        .map(|member| Cursor::new(&member.name, slots))
        .collect();
    let mut table = vec![0u32; slots];
    let mut taken = vec![false; slots];
    let mut filled = 0;
    // Every turn fills exactly one slot per backend (the permutation covers every slot, so a
    // free one is always found) until the table is full.
    while filled < slots {
        for (member, cursor) in sorted.iter().zip(&mut cursors) {
            let mut slot = cursor.next(slots);
            while taken[slot] {
                slot = cursor.next(slots);
            }
            taken[slot] = true;
            table[slot] = member.id;
            filled += 1;
            if filled == slots {
                break;
            }
        }
    }
    table
}

/// Where a backend is in its permutation: slot `(offset + j × skip) mod M` for turn `j`.
struct Cursor {
    slot: usize,
    skip: usize,
}

impl Cursor {
    fn new(name: &Name, m: usize) -> Self {
        let m64 = m as u64;
        // Both are below `m`, which is a `usize`.
        let offset = usize::try_from(hash(name, OFFSET_SEED) % m64).unwrap_or_default();
        let skip = usize::try_from(hash(name, SKIP_SEED) % (m64 - 1)).unwrap_or_default() + 1;
        Self { slot: offset, skip }
    }

    /// The current slot, moving the cursor to the next one. `skip < m`, so one subtraction
    /// replaces the modulo (a division, the most expensive step of the fill).
    fn next(&mut self, m: usize) -> usize {
        let slot = self.slot;
        self.slot += self.skip;
        if self.slot >= m {
            self.slot -= m;
        }
        slot
    }
}

/// Seeds of the two hashes of a name (`h1` and `h2` of the paper).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031;
const SKIP_SEED: u64 = 0x736b_6970_7365_6564;

/// FNV-1a (64 bits) of `bytes`, its basis offset by `seed`, then the murmur3 64-bit finaliser:
/// FNV alone leaves the low bits, which `mod M` keeps, poorly mixed for short inputs.
#[must_use]
pub fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = fnv1a(bytes, seed);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// FNV-1a, 64 bits, with `seed` mixed into its offset basis (exclusive or).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dataplane_abi::maglev::LARGE;
    use dataplane_abi::v4_mapped;

    use super::*;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                Member::new(v4_mapped([10, 1, hi, lo]), 8080, i + 1)
            })
            .collect()
    }

    fn counts(slots: &[u32]) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for id in slots {
            *out.entry(*id).or_default() += 1;
        }
        out
    }

    fn tier(n: usize) -> Tier {
        Tier::for_backends(n).unwrap()
    }

    #[test]
    fn fnv1a_matches_its_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a(b"", 0), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", 0), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", 0), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_hash_and_the_fill_are_pinned() {
        // Changing these moves every backend of every Service after an upgrade. The figures
        // come from a separate implementation of the paper's pseudo-code (Python, outside
        // the repository).
        let name = Member::new(v4_mapped([10, 0, 0, 1]), 80, 1).name;
        assert_eq!(hash(&name, OFFSET_SEED), 0x69dc_d44e_512a_d92b);
        assert_eq!(hash(&name, SKIP_SEED), 0x62ad_8e90_0388_13c4);
        let set = [
            Member::new(v4_mapped([10, 0, 0, 3]), 8080, 3),
            Member::new(v4_mapped([10, 0, 0, 1]), 80, 1),
            Member::new(v4_mapped([10, 0, 0, 2]), 80, 2),
        ];
        let table = Table::build(&set, Tier::Small).unwrap();
        assert_eq!(
            table.slots[..16],
            [1, 3, 2, 1, 3, 2, 1, 3, 2, 1, 1, 2, 1, 1, 1, 1]
        );
    }

    #[test]
    fn every_backend_gets_its_share_within_one_slot() {
        for n in [1, 2, 3, 7, 10, 12, 13, 50, 102, 103, 1000, 5000, LARGE] {
            let set = members(u32::try_from(n).unwrap());
            let table = Table::build(&set, tier(n)).unwrap();
            let m = table.tier.slots();
            assert_eq!(table.slots.len(), m);
            let counts = counts(&table.slots);
            assert_eq!(counts.len(), n, "{n} backends, every one in the table");
            let (lo, hi) = (m / n, m.div_ceil(n));
            for (id, c) in &counts {
                assert!(
                    (lo..=hi).contains(c),
                    "{n} backends over {m} slots: backend {id} has {c}, not {lo} or {hi}"
                );
            }
        }
    }

    #[test]
    fn the_table_is_a_function_of_the_set() {
        let set = members(10);
        let mut shuffled = set.clone();
        shuffled.reverse();
        shuffled.rotate_left(3);
        assert_eq!(
            Table::build(&set, Tier::Small),
            Table::build(&shuffled, Tier::Small)
        );
    }

    /// Mean and worst number of slots that move between backends that stay, when one of
    /// `n` backends leaves (each of the first 20 in turn).
    fn collateral_moves(n: u32, tier: Tier) -> (f64, usize) {
        let set = members(n);
        let before = Table::build(&set, tier).unwrap().slots;
        let trials = n.min(20);
        let (mut total, mut worst) = (0, 0);
        for removed in set.iter().take(trials as usize).map(|m| m.id) {
            let rest: Vec<Member> = set.iter().filter(|m| m.id != removed).copied().collect();
            let after = Table::build(&rest, tier).unwrap().slots;
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != removed && b != a)
                .count();
            total += moved;
            worst = worst.max(moved);
        }
        (
            f64::from(u32::try_from(total).unwrap()) / f64::from(trials),
            worst,
        )
    }

    /// Maglev trades a little disruption for an even spread: slots of backends that stay
    /// move too, fewer the more slots each backend has. The bounds are this implementation's
    /// measured figures (rounded up), so that a change to the hash or the fill shows here;
    /// modulo hashing would move about (N-1)/N of all slots.
    #[test]
    fn removing_one_backend_moves_few_slots_of_the_others() {
        for (n, tier, max_mean_percent) in [
            (10, Tier::Small, 9.0),
            (100, Tier::Medium, 4.5),
            (1000, Tier::Large, 0.7),
        ] {
            let (mean, worst) = collateral_moves(n, tier);
            let m = f64::from(u32::try_from(tier.slots()).unwrap());
            let percent = mean * 100.0 / m;
            println!(
                "{n} backends over {m} slots: removing one moves {mean:.1} slots of the others \
                 ({percent:.1} %; worst {worst}); its own share is {:.1}",
                m / f64::from(n)
            );
            assert!(
                percent <= max_mean_percent,
                "{n} backends over {m} slots: {percent:.1} % of the slots of backends that stay \
                 moved, more than {max_mean_percent} %"
            );
        }
    }

    #[test]
    fn an_empty_set_has_no_table() {
        assert_eq!(Table::build(&[], Tier::Small), None);
    }
}
