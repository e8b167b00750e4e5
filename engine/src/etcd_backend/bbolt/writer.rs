//! Writes a bbolt database in one pass with bounded memory.
//!
//! Entries arrive sorted per bucket. A [`BucketBuilder`] fills one leaf at a time; a
//! full leaf is written out at once and its first key and page id go up into the branch
//! level above, which is written out the same way when full. So a bucket of any size
//! costs one page of memory per tree level. Pages get consecutive ids in the order they
//! are written; the metas (pages 0 and 1), which name the root and the high water mark,
//! are written last. Layout and limits: `docs/format/bbolt.md`.

use std::io::{self, Seek, SeekFrom, Write};

use super::format::{
    write_u16, write_u32, write_u64, Meta, BRANCH_CHILD_OFFSET, BRANCH_ELEMENT_BYTES,
    BRANCH_KSIZE_OFFSET, BRANCH_POS_OFFSET, BUCKET_HEADER_BYTES, BUCKET_ROOT_OFFSET,
    BUCKET_SEQUENCE_OFFSET, INLINE_BUCKET_DIVISOR, KEY_BYTES_MAX, LEAF_ELEMENT_BYTES,
    LEAF_FLAGS_OFFSET, LEAF_FLAG_BUCKET, LEAF_KSIZE_OFFSET, LEAF_POS_OFFSET, LEAF_VSIZE_OFFSET,
    META_OFFSET, NO_FREELIST, PAGE_COUNT_MAX, PAGE_COUNT_OFFSET, PAGE_FLAGS_OFFSET,
    PAGE_FLAG_BRANCH, PAGE_FLAG_LEAF, PAGE_FLAG_META, PAGE_HEADER_BYTES, PAGE_ID_OFFSET,
    PAGE_OVERFLOW_OFFSET, PAGE_SIZE_MAX, PAGE_SIZE_MIN, VALUE_BYTES_MAX,
};

/// The transaction id of meta 0; meta 1 gets one less, as in a bbolt snapshot.
const SNAPSHOT_TXID: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the database: {0}")]
    Io(#[from] io::Error),
    #[error("page size {0} is not a power of two between {PAGE_SIZE_MIN} and {PAGE_SIZE_MAX}")]
    PageSize(usize),
    #[error("a key must not be empty")]
    EmptyKey,
    #[error("key of {0} bytes is larger than bbolt's maximum of {KEY_BYTES_MAX}")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes is larger than bbolt's maximum of {VALUE_BYTES_MAX}")]
    ValueTooLarge(usize),
    #[error("keys must arrive in ascending order: {key:?} after {previous:?}")]
    Unsorted { previous: Vec<u8>, key: Vec<u8> },
    #[error("the database needs more than 2^64 pages")]
    TooManyPages,
}

/// What a finished bucket becomes in its parent: an inline leaf or a tree root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketValue {
    Inline(Vec<u8>),
    Root(u64),
}

impl BucketValue {
    /// The bytes stored as the bucket's value in its parent leaf.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BucketValue::Inline(bytes) => bytes.clone(),
            BucketValue::Root(root) => {
                let mut header = vec![0u8; BUCKET_HEADER_BYTES];
                write_u64(&mut header, BUCKET_ROOT_OFFSET, *root);
                write_u64(&mut header, BUCKET_SEQUENCE_OFFSET, 0);
                header
            }
        }
    }
}

/// What [`DbWriter::finish`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbSummary {
    pub page_size: usize,
    /// Pages written, metas included: the meta's high water mark.
    pub pages: u64,
    /// `pages * page_size`: the file's length.
    pub bytes: u64,
}

/// The page sink: hands out consecutive page ids and writes pages at their offsets.
pub struct DbWriter<W> {
    out: W,
    page_size: usize,
    next_pgid: u64,
    /// Reused to encode pages.
    scratch: Vec<u8>,
}

impl<W: Write + Seek> DbWriter<W> {
    /// Starts a database at the beginning of `out` (pages 0 and 1 are left for the
    /// metas, written by [`DbWriter::finish`]).
    pub fn new(mut out: W, page_size: usize) -> Result<DbWriter<W>, WriteError> {
        if !page_size.is_power_of_two() || !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_size) {
            return Err(WriteError::PageSize(page_size));
        }
        out.seek(SeekFrom::Start(2 * page_size as u64))?;
        Ok(DbWriter {
            out,
            page_size,
            next_pgid: 2,
            scratch: Vec::new(),
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// A builder for a bucket of this database.
    pub fn bucket(&self) -> BucketBuilder {
        BucketBuilder::new(self.page_size)
    }

    /// Encodes a node into whole pages at the next page id and writes them.
    fn write_node(&mut self, node: &Node, leaf: bool) -> Result<u64, WriteError> {
        let pgid = self.next_pgid;
        let content = node.page_bytes();
        let pages = content.div_ceil(self.page_size).max(1);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(pages * self.page_size, 0);
        node.encode(&mut scratch, pgid, leaf, pages - 1);
        let written = self.out.write_all(&scratch);
        self.scratch = scratch;
        written?;
        self.next_pgid = pgid
            .checked_add(pages as u64)
            .ok_or(WriteError::TooManyPages)?;
        Ok(pgid)
    }

    /// Writes the root bucket (its entries: the top-level buckets), then the metas.
    /// Returns the output, positioned after the last page, and what was written.
    pub fn finish(mut self, root: BucketBuilder) -> Result<(W, DbSummary), WriteError> {
        let root = match root.finish_inner(&mut self, false)? {
            BucketValue::Root(pgid) => pgid,
            BucketValue::Inline(_) => unreachable_inline(),
        };
        let high_water = self.next_pgid;
        let mut page = vec![0u8; self.page_size];
        for (pgid, txid) in [(0u64, SNAPSHOT_TXID), (1, SNAPSHOT_TXID - 1)] {
            page.fill(0);
            write_u64(&mut page, PAGE_ID_OFFSET, pgid);
            write_u16(&mut page, PAGE_FLAGS_OFFSET, PAGE_FLAG_META);
            let meta = Meta {
                page_size: u32::try_from(self.page_size)
                    .map_err(|_| WriteError::PageSize(self.page_size))?,
                flags: 0,
                root,
                root_sequence: 0,
                freelist: NO_FREELIST,
                high_water,
                txid,
            }
            .encode();
            if let Some(slot) = page.get_mut(META_OFFSET..META_OFFSET + meta.len()) {
                slot.copy_from_slice(&meta);
            }
            self.out
                .seek(SeekFrom::Start(pgid * self.page_size as u64))?;
            self.out.write_all(&page)?;
        }
        let bytes = high_water
            .checked_mul(self.page_size as u64)
            .ok_or(WriteError::TooManyPages)?;
        self.out.seek(SeekFrom::Start(bytes))?;
        self.out.flush()?;
        Ok((
            self.out,
            DbSummary {
                page_size: self.page_size,
                pages: high_water,
                bytes,
            },
        ))
    }
}

/// `finish_inner(.., allow_inline = false)` never inlines.
#[cold]
fn unreachable_inline() -> u64 {
    debug_assert!(false, "a bucket finished without inlining came back inline");
    0
}

/// The entries of one page being filled: element metadata plus the packed key/value
/// bytes, so a node costs two allocations however many elements it holds.
#[derive(Default)]
struct Node {
    /// (flags or child pgid, key length, value length) per element.
    elements: Vec<(u64, u32, u32)>,
    data: Vec<u8>,
}

impl Node {
    fn len(&self) -> usize {
        self.elements.len()
    }

    /// Bytes of the page this node becomes (before rounding up to whole pages).
    fn page_bytes(&self) -> usize {
        PAGE_HEADER_BYTES + self.elements.len() * LEAF_ELEMENT_BYTES + self.data.len()
    }

    fn first_key(&self) -> &[u8] {
        let length = self.elements.first().map_or(0, |e| e.1 as usize);
        self.data.get(..length).unwrap_or_default()
    }

    fn push(&mut self, tag: u64, key: &[u8], value: &[u8]) {
        self.elements
            .push((tag, key.len() as u32, value.len() as u32));
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    fn clear(&mut self) {
        self.elements.clear();
        self.data.clear();
    }

    /// Lays the node out as bbolt's `node.write` does: header, elements, then each
    /// element's key and value in order. `page` is zeroed and large enough.
    fn encode(&self, page: &mut [u8], pgid: u64, leaf: bool, overflow: usize) {
        write_u64(page, PAGE_ID_OFFSET, pgid);
        write_u16(
            page,
            PAGE_FLAGS_OFFSET,
            if leaf {
                PAGE_FLAG_LEAF
            } else {
                PAGE_FLAG_BRANCH
            },
        );
        write_u16(page, PAGE_COUNT_OFFSET, self.elements.len() as u16);
        write_u32(page, PAGE_OVERFLOW_OFFSET, overflow as u32);
        let element_bytes = if leaf {
            LEAF_ELEMENT_BYTES
        } else {
            BRANCH_ELEMENT_BYTES
        };
        let data_start = PAGE_HEADER_BYTES + self.elements.len() * element_bytes;
        if let Some(slot) = page.get_mut(data_start..data_start + self.data.len()) {
            slot.copy_from_slice(&self.data);
        }
        let mut data_offset = data_start;
        for (index, (tag, key_length, value_length)) in self.elements.iter().enumerate() {
            let element = PAGE_HEADER_BYTES + index * element_bytes;
            let pos = (data_offset - element) as u32;
            if leaf {
                write_u32(page, element + LEAF_FLAGS_OFFSET, *tag as u32);
                write_u32(page, element + LEAF_POS_OFFSET, pos);
                write_u32(page, element + LEAF_KSIZE_OFFSET, *key_length);
                write_u32(page, element + LEAF_VSIZE_OFFSET, *value_length);
            } else {
                write_u32(page, element + BRANCH_POS_OFFSET, pos);
                write_u32(page, element + BRANCH_KSIZE_OFFSET, *key_length);
                write_u64(page, element + BRANCH_CHILD_OFFSET, *tag);
            }
            data_offset += *key_length as usize + *value_length as usize;
        }
    }
}

/// Builds one bucket from entries in ascending key order, writing full pages as it goes.
pub struct BucketBuilder {
    page_size: usize,
    leaf: Node,
    /// Branch levels, bottom first: (first key of child, child pgid) entries.
    branches: Vec<Node>,
    /// Whether any page of this bucket was written (then it cannot be inline).
    wrote_pages: bool,
    /// Whether the current leaf holds a nested bucket (then it cannot be inline).
    has_nested: bool,
    last_key: Vec<u8>,
    entries: u64,
}

impl BucketBuilder {
    fn new(page_size: usize) -> BucketBuilder {
        BucketBuilder {
            page_size,
            leaf: Node::default(),
            branches: Vec::new(),
            wrote_pages: false,
            has_nested: false,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Adds a key and its value; `key` must sort after every key added before.
    pub fn put<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriteError> {
        self.add(db, 0, key, value)
    }

    /// Adds a finished nested bucket under `name`.
    pub fn put_bucket<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        name: &[u8],
        bucket: &BucketValue,
    ) -> Result<(), WriteError> {
        self.add(db, u64::from(LEAF_FLAG_BUCKET), name, &bucket.encode())
    }

    fn add<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        flags: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriteError> {
        if key.is_empty() {
            return Err(WriteError::EmptyKey);
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(WriteError::KeyTooLarge(key.len()));
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(WriteError::ValueTooLarge(value.len()));
        }
        if self.entries > 0 && key <= self.last_key.as_slice() {
            return Err(WriteError::Unsorted {
                previous: self.last_key.clone(),
                key: key.to_vec(),
            });
        }
        let element = LEAF_ELEMENT_BYTES + key.len() + value.len();
        let full =
            self.leaf.page_bytes() + element > self.page_size || self.leaf.len() >= PAGE_COUNT_MAX;
        if self.leaf.len() > 0 && full {
            self.flush_leaf(db)?;
        }
        self.leaf.push(flags, key, value);
        self.has_nested |= flags != 0;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.entries += 1;
        Ok(())
    }

    fn flush_leaf<W: Write + Seek>(&mut self, db: &mut DbWriter<W>) -> Result<(), WriteError> {
        let pgid = db.write_node(&self.leaf, true)?;
        self.wrote_pages = true;
        let first = self.leaf.first_key().to_vec();
        self.leaf.clear();
        self.push_branch(db, 0, &first, pgid)
    }

    /// Adds (first key, child) to branch level `level`, writing the level's page first
    /// when the entry would not fit.
    fn push_branch<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        level: usize,
        key: &[u8],
        child: u64,
    ) -> Result<(), WriteError> {
        if self.branches.len() <= level {
            self.branches.push(Node::default());
        }
        let Some(node) = self.branches.get_mut(level) else {
            return Ok(());
        };
        let element = BRANCH_ELEMENT_BYTES + key.len();
        let full = node.page_bytes() + element > self.page_size || node.len() >= PAGE_COUNT_MAX;
        if node.len() > 0 && full {
            let pgid = db.write_node(node, false)?;
            let first = node.first_key().to_vec();
            node.clear();
            node.push(child, key, &[]);
            return self.push_branch(db, level + 1, &first, pgid);
        }
        node.push(child, key, &[]);
        Ok(())
    }

    /// Finishes the bucket: inline when bbolt would inline it, else its tree's root.
    pub fn finish<W: Write + Seek>(self, db: &mut DbWriter<W>) -> Result<BucketValue, WriteError> {
        self.finish_inner(db, true)
    }

    fn finish_inner<W: Write + Seek>(
        mut self,
        db: &mut DbWriter<W>,
        allow_inline: bool,
    ) -> Result<BucketValue, WriteError> {
        if !self.wrote_pages {
            let inline_max = self.page_size / INLINE_BUCKET_DIVISOR;
            if allow_inline && !self.has_nested && self.leaf.page_bytes() <= inline_max {
                let mut value = vec![0u8; BUCKET_HEADER_BYTES + self.leaf.page_bytes()];
                if let Some(page) = value.get_mut(BUCKET_HEADER_BYTES..) {
                    self.leaf.encode(page, 0, true, 0);
                }
                return Ok(BucketValue::Inline(value));
            }
            return Ok(BucketValue::Root(db.write_node(&self.leaf, true)?));
        }
        if self.leaf.len() > 0 {
            self.flush_leaf(db)?;
        }
        // Bottom-up: every level below the top is written and pushed up; the top level
        // is the root when one entry is left in it.
        let mut level = 0;
        loop {
            let top = level + 1 == self.branches.len();
            let Some(node) = self.branches.get_mut(level) else {
                break;
            };
            if top && node.len() == 1 {
                let root = node.elements.first().map_or(0, |e| e.0);
                return Ok(BucketValue::Root(root));
            }
            let pgid = db.write_node(node, false)?;
            let first = node.first_key().to_vec();
            node.clear();
            self.push_branch(db, level + 1, &first, pgid)?;
            level += 1;
        }
        // Unreachable: a written leaf always reaches level 0, and the loop ends at a top
        // level of one entry.
        Err(WriteError::Io(io::Error::other(
            "bucket tree without a root",
        )))
    }
}
