//! A list of shared objects kept from one compilation to the next.
//!
//! Copying a list of 10 000 `Arc`s touches 10 000 reference counts, each in its own object,
//! rarely in cache: a millisecond on a real heap. The list is therefore in chunks, each an
//! `Arc` too: a list that replaces a few objects (an endpoint change replaces one slice)
//! shares every chunk but theirs.

use std::sync::Arc;

/// Objects per chunk.
const CHUNK: usize = 256;

/// A list of `Arc<T>` in shared chunks of [`CHUNK`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Chunked<T> {
    chunks: Vec<Arc<Vec<Arc<T>>>>,
}

impl<T> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
        }
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T> FromIterator<Arc<T>> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = Arc<T>>>(items: I) -> Self {
        let mut out = Self::default();
        let mut chunk = Vec::with_capacity(CHUNK);
        for item in items {
            chunk.push(item);
            if chunk.len() == CHUNK {
                out.chunks.push(Arc::new(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK),
                )));
            }
        }
        if !chunk.is_empty() {
            out.chunks.push(Arc::new(chunk));
        }
        out
    }
}

impl<T> Chunked<T> {
    pub(super) fn get(&self, index: usize) -> Option<&Arc<T>> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    /// The objects from `index` on.
    pub(super) fn iter_from(&self, index: usize) -> impl Iterator<Item = &Arc<T>> {
        let (first, skip) = (index / CHUNK, index % CHUNK);
        self.chunks
            .iter()
            .skip(first)
            .flat_map(|chunk| chunk.iter())
            .skip(skip)
    }

    /// This list with the object at each index of `replaced` replaced: the chunks they are
    /// in are copied, the others shared.
    pub(super) fn with_replaced<'a>(
        &self,
        replaced: impl IntoIterator<Item = (usize, &'a Arc<T>)>,
    ) -> Self
    where
        T: 'a,
    {
        let mut out = self.clone();
        for (index, item) in replaced {
            if let Some(chunk) = out.chunks.get_mut(index / CHUNK)
                && let Some(slot) = Arc::make_mut(chunk).get_mut(index % CHUNK)
            {
                *slot = Arc::clone(item);
            }
        }
        out
    }
}

#[cfg(test)]
impl<T> Chunked<T> {
    /// How many chunks `self` shares with `other`, and how many it has.
    pub(super) fn shared_chunks(&self, other: &Self) -> (usize, usize) {
        let shared = self
            .chunks
            .iter()
            .zip(&other.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        (shared, self.chunks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_object_copies_its_chunk_only() {
        let items: Vec<Arc<usize>> = (0..3 * CHUNK + 7).map(Arc::new).collect();
        let list: Chunked<usize> = items.iter().cloned().collect();
        assert_eq!(list.iter_from(0).count(), items.len());
        assert_eq!(list.get(CHUNK + 3).map(|i| **i), Some(CHUNK + 3));
        assert_eq!(list.get(items.len()), None);
        assert_eq!(
            list.iter_from(2 * CHUNK + 5)
                .map(|i| **i)
                .collect::<Vec<_>>(),
            (2 * CHUNK + 5..3 * CHUNK + 7).collect::<Vec<_>>()
        );
        let new = Arc::new(9999);
        let next = list.with_replaced([(CHUNK + 3, &new)]);
        assert_eq!(next.get(CHUNK + 3).map(|i| **i), Some(9999));
        assert_eq!(list.get(CHUNK + 3).map(|i| **i), Some(CHUNK + 3));
        let shared: Vec<bool> = (0..4)
            .map(|c| Arc::ptr_eq(&list.chunks[c], &next.chunks[c]))
            .collect();
        assert_eq!(shared, [true, false, true, true]);
    }
}
