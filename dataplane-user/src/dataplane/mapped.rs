//! Arrays written through a memory mapping (`BPF_F_MMAPABLE`, Linux 5.5): a store into the
//! mapping is a store into the map, seen by the next program run, with no system call. Into
//! an array, `BPF_MAP_UPDATE_BATCH` still costs 0.2 µs an entry (a copy from user memory and
//! an update call per entry); into a hash map allocated on use, 0.7 µs. Through the mapping,
//! 100 000 backends cost a copy of 2.4 MB.
//!
//! Programs read an entry while the agent may be writing it, so each entry carries a tag (the
//! id it holds, see [`Tagged`]) and is written word by word in an order that never shows a
//! reader a mix under a tag it looks for: the rest of the entry first, then the tag; a freed
//! entry gets its tag cleared and nothing else. Every word is one aligned 32-bit store, so a
//! word itself is never torn, and each is a release store, so words reach other CPUs in the
//! order of the value's layout (a small Maglev table's backends before its slots, which name
//! them). On x86 a release store is a plain store.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// A value of a mapped array that names what it holds in one 32-bit word.
pub(super) trait Tagged: aya::Pod {
    /// Byte offset of the tag word; a tag of 0 marks a free entry.
    const TAG_OFFSET: usize;
}

/// A `BPF_F_MMAPABLE` array of `T`, mapped into this process.
pub(super) struct MappedArray<T: Tagged> {
    base: NonNull<AtomicU32>,
    bytes: usize,
    entries: u32,
    _values: PhantomData<T>,
}

// SAFETY: the mapping belongs to this value alone (unmapped on drop) and is only reached
// through it; its words are accessed atomically, so moving it to another thread is sound.
unsafe impl<T: Tagged> Send for MappedArray<T> {}

impl<T: Tagged> MappedArray<T> {
    /// The kernel stores an array's values `round_up(size, 8)` bytes apart; values of this
    /// size and alignment are exactly that far apart, and made of whole 32-bit words.
    const LAYOUT_OK: () = assert!(
        size_of::<T>().is_multiple_of(8)
            && align_of::<T>() >= 4
            && T::TAG_OFFSET.is_multiple_of(4)
            && T::TAG_OFFSET + 4 <= size_of::<T>()
    );
    const WORDS: usize = size_of::<T>() / 4;
    const TAG_WORD: usize = T::TAG_OFFSET / 4;

    /// Maps the array of `entries` values behind `fd`, which must have been created with
    /// `BPF_F_MMAPABLE` and values of type `T`.
    pub(super) fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        let () = Self::LAYOUT_OK;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let bytes = (entries as usize * size_of::<T>()).next_multiple_of(page);
        // SAFETY: a fresh shared mapping of the map's values, which the kernel sizes at
        // `entries` values rounded up to whole pages; nothing else aliases it in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<AtomicU32>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            bytes,
            entries,
            _values: PhantomData,
        })
    }

    /// Word `word` of entry `index`, which must be below `entries`.
    fn word(&self, index: u32, word: usize) -> &AtomicU32 {
        debug_assert!(index < self.entries && word < Self::WORDS);
        // SAFETY: inside the mapping (index < entries, word < WORDS), 4-aligned (the mapping
        // is page-aligned and values are whole words), and only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(index as usize * Self::WORDS + word) }
    }

    /// Writes `value` into entry `index`, word by word in layout order and its tag last;
    /// out-of-range indexes are refused.
    pub(super) fn write(&self, index: u32, value: &T) -> io::Result<()> {
        self.check(index)?;
        let word_of = |i: usize| {
            // SAFETY: `T` is plain old data of `WORDS` words, aligned to 4 (LAYOUT_OK).
            unsafe { std::ptr::from_ref(value).cast::<u32>().add(i).read() }
        };
        for i in (0..Self::WORDS).filter(|i| *i != Self::TAG_WORD) {
            self.word(index, i).store(word_of(i), Ordering::Release);
        }
        self.word(index, Self::TAG_WORD)
            .store(word_of(Self::TAG_WORD), Ordering::Release);
        Ok(())
    }

    /// Frees entry `index` if it holds `tag` (a repeated removal finds it free already).
    pub(super) fn free(&self, index: u32, tag: u32) -> io::Result<()> {
        self.check(index)?;
        let _ = self.word(index, Self::TAG_WORD).compare_exchange(
            tag,
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Every entry with a tag, with its index.
    pub(super) fn tagged(&self) -> impl Iterator<Item = (u32, T)> + '_ {
        (0..self.entries)
            .filter(|i| self.word(*i, Self::TAG_WORD).load(Ordering::Acquire) != 0)
            .map(|i| (i, self.read(i)))
    }

    /// Entry `index` as it is now, if its tag is `tag`.
    pub(super) fn get(&self, index: u32, tag: u32) -> Option<T> {
        (index < self.entries && self.word(index, Self::TAG_WORD).load(Ordering::Acquire) == tag)
            .then(|| self.read(index))
    }

    fn read(&self, index: u32) -> T {
        let mut value = std::mem::MaybeUninit::<T>::uninit();
        for i in 0..Self::WORDS {
            let w = self.word(index, i).load(Ordering::Relaxed);
            // SAFETY: inside the value (`WORDS` words, aligned to 4, LAYOUT_OK).
            unsafe { value.as_mut_ptr().cast::<u32>().add(i).write(w) };
        }
        // SAFETY: every word written; `T` is plain old data, valid for any bytes.
        unsafe { value.assume_init() }
    }

    fn check(&self, index: u32) -> io::Result<()> {
        if index < self.entries {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "index {index} beyond the {} entries of the array",
                self.entries
            )))
        }
    }
}

impl<T: Tagged> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of that length, no longer referenced.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
