//! Reads a bbolt database: picks the meta as bbolt does, walks buckets with a cursor that
//! loads one page at a time (memory: one page per tree level), and checks the file as
//! bbolt's `tx.Check` does. Every length and offset read from the file is checked before
//! use; damage is a [`ReadError`], never a panic, and a cursor never loops (a page seen
//! twice in one bucket is damage, depth is bounded).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::format::{
    read_u16, read_u32, read_u64, Meta, BRANCH_CHILD_OFFSET, BRANCH_ELEMENT_BYTES,
    BRANCH_KSIZE_OFFSET, BRANCH_POS_OFFSET, BUCKET_HEADER_BYTES, BUCKET_ROOT_OFFSET,
    BUCKET_SEQUENCE_OFFSET, FIRST_READ_BYTES, LEAF_ELEMENT_BYTES, LEAF_FLAGS_OFFSET,
    LEAF_FLAG_BUCKET, LEAF_KSIZE_OFFSET, LEAF_POS_OFFSET, LEAF_VSIZE_OFFSET, META_BYTES,
    META_CHECKSUM_OFFSET, META_FLAGS_OFFSET, META_FREELIST_OFFSET, META_HIGH_WATER_OFFSET,
    META_MAGIC, META_MAGIC_OFFSET, META_OFFSET, META_PAGE_SIZE_OFFSET, META_ROOT_OFFSET,
    META_TXID_OFFSET, META_VERSION, META_VERSION_OFFSET, NO_FREELIST, PAGE_COUNT_OFFSET,
    PAGE_FLAGS_OFFSET, PAGE_FLAG_BRANCH, PAGE_FLAG_FREELIST, PAGE_FLAG_LEAF, PAGE_HEADER_BYTES,
    PAGE_ID_OFFSET, PAGE_OVERFLOW_OFFSET, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, PAGE_SIZE_MIN,
    TREE_DEPTH_MAX,
};

/// Where the database bytes come from: a file (read with `pread`, page by page) or
/// memory (tests, the fuzz target).
pub trait Source {
    /// Bytes available; the database may be shorter (a live file grows ahead of use).
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; the caller checked the range against [`Source::len`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// A file read with `pread`, limited to its first `len` bytes (a snapshot file's trailer
/// is not part of the database).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }

    /// The same file, limited to its first `len` bytes.
    pub fn limited(self, len: u64) -> FileSource {
        FileSource {
            file: self.file,
            len: len.min(self.len),
        }
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// Why a meta page was not usable (bbolt's `ErrInvalid`, `ErrVersionMismatch`,
/// `ErrChecksum`, plus the sanity checks bbolt leaves to a later crash).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("invalid database")]
    Invalid,
    #[error("version mismatch")]
    VersionMismatch,
    #[error("checksum error")]
    Checksum,
    #[error("page size {0} is not a power of two between {PAGE_SIZE_MIN} and {PAGE_SIZE_MAX}")]
    PageSize(u32),
    #[error("high water mark {high_water} pages is beyond the file ({pages} pages)")]
    HighWater { high_water: u64, pages: u64 },
    #[error("root page {root} outside the data pages 2..{high_water}")]
    Root { root: u64, high_water: u64 },
    #[error("freelist page {freelist} outside the data pages 2..{high_water}")]
    Freelist { freelist: u64, high_water: u64 },
}

/// What is wrong with a page.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("page id outside the data pages 2..{high_water}")]
    OutOfBounds { high_water: u64 },
    #[error("page with {overflow} overflow pages runs past the high water mark {high_water}")]
    OverflowOutOfBounds { overflow: u32, high_water: u64 },
    #[error("header names page {found}")]
    WrongId { found: u64 },
    #[error("flags {flags:#x} are neither a branch nor a leaf")]
    NotBranchOrLeaf { flags: u16 },
    #[error("flags {flags:#x} are not a freelist")]
    NotFreelist { flags: u16 },
    #[error("branch page without elements")]
    EmptyBranch,
    #[error("{count} elements do not fit in {bytes} bytes")]
    ElementsOverflow { count: usize, bytes: usize },
    #[error("element {index} points outside the page")]
    ElementOutOfPage { index: usize },
    #[error("key {index} is not above the key before it")]
    KeysOutOfOrder { index: usize },
    #[error("referenced twice in one bucket")]
    Cycle,
    #[error("tree deeper than {TREE_DEPTH_MAX} levels")]
    TooDeep,
    #[error("a nested bucket's value of {bytes} bytes is shorter than a bucket header")]
    BucketValue { bytes: usize },
    #[error("an inline bucket's page is damaged: {0}")]
    Inline(Box<Damage>),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the database: {0}")]
    Io(#[from] io::Error),
    /// bbolt's message for a file shorter than two pages.
    #[error("file size too small")]
    FileTooSmall { len: u64 },
    /// Neither meta page is usable; the errors of meta 0 and meta 1. Shown as bbolt
    /// shows it (etcdctl prints it): meta 0's error.
    #[error("{meta0}")]
    NoValidMeta { meta0: MetaError, meta1: MetaError },
    #[error("page {page}: {damage}")]
    Damaged { page: u64, damage: Damage },
}

impl ReadError {
    fn damaged(page: u64, damage: Damage) -> ReadError {
        ReadError::Damaged { page, damage }
    }
}

/// A bucket to read: a tree rooted at a page, or an inline leaf page (the bucket value
/// after its header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketRef {
    Tree { root: u64 },
    Inline { page: Bytes },
}

impl BucketRef {
    /// Parses a nested bucket's value (`LEAF_FLAG_BUCKET` entries). `page` names the leaf
    /// it came from, for errors.
    pub fn from_value(value: &Bytes, page: u64) -> Result<(BucketRef, u64), ReadError> {
        let (Some(root), Some(sequence)) = (
            read_u64(value, BUCKET_ROOT_OFFSET),
            read_u64(value, BUCKET_SEQUENCE_OFFSET),
        ) else {
            return Err(ReadError::damaged(
                page,
                Damage::BucketValue { bytes: value.len() },
            ));
        };
        if root != 0 {
            return Ok((BucketRef::Tree { root }, sequence));
        }
        let inline = value.slice(BUCKET_HEADER_BYTES.min(value.len())..);
        // Checked here so that a cursor over it can trust the element table.
        check_elements(&inline, true)
            .map_err(|damage| ReadError::damaged(page, Damage::Inline(Box::new(damage))))?;
        Ok((BucketRef::Inline { page: inline }, sequence))
    }
}

/// One entry of a bucket. `key` and `value` share the page buffer they were read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub value: Bytes,
    /// A nested bucket: `value` is its bucket header (+ inline page).
    pub is_bucket: bool,
    /// The page the entry was read from (0 for an inline bucket), for errors.
    pub page: u64,
}

/// An open database: the chosen meta and the bytes.
#[derive(Debug)]
pub struct Db<S> {
    source: S,
    page_size: usize,
    meta: Meta,
}

impl Db<FileSource> {
    pub fn open_file(path: &Path) -> Result<Db<FileSource>, ReadError> {
        Db::open(FileSource::open(path)?)
    }
}

fn parse_meta(page: &[u8], file_len: u64, page_size: usize) -> Result<Meta, MetaError> {
    let meta = page
        .get(META_OFFSET..META_OFFSET + META_BYTES)
        .ok_or(MetaError::Invalid)?;
    let field32 = |offset| read_u32(meta, offset).ok_or(MetaError::Invalid);
    let field64 = |offset| read_u64(meta, offset).ok_or(MetaError::Invalid);
    if field32(META_MAGIC_OFFSET)? != META_MAGIC {
        return Err(MetaError::Invalid);
    }
    if field32(META_VERSION_OFFSET)? != META_VERSION {
        return Err(MetaError::VersionMismatch);
    }
    let checksum = field64(META_CHECKSUM_OFFSET)?;
    let summed = super::format::fnv1a_64(meta.get(..META_CHECKSUM_OFFSET).unwrap_or_default());
    // bbolt accepts a zero checksum as "not computed".
    if checksum != 0 && checksum != summed {
        return Err(MetaError::Checksum);
    }
    let parsed = Meta {
        page_size: field32(META_PAGE_SIZE_OFFSET)?,
        flags: field32(META_FLAGS_OFFSET)?,
        root: field64(META_ROOT_OFFSET + BUCKET_ROOT_OFFSET)?,
        root_sequence: field64(META_ROOT_OFFSET + BUCKET_SEQUENCE_OFFSET)?,
        freelist: field64(META_FREELIST_OFFSET)?,
        high_water: field64(META_HIGH_WATER_OFFSET)?,
        txid: field64(META_TXID_OFFSET)?,
    };
    let pages = file_len / page_size as u64;
    if parsed.high_water > pages || parsed.high_water < 3 {
        return Err(MetaError::HighWater {
            high_water: parsed.high_water,
            pages,
        });
    }
    if parsed.root < 2 || parsed.root >= parsed.high_water {
        return Err(MetaError::Root {
            root: parsed.root,
            high_water: parsed.high_water,
        });
    }
    if parsed.freelist != NO_FREELIST
        && (parsed.freelist < 2 || parsed.freelist >= parsed.high_water)
    {
        return Err(MetaError::Freelist {
            freelist: parsed.freelist,
            high_water: parsed.high_water,
        });
    }
    Ok(parsed)
}

fn valid_page_size(page_size: u32) -> Option<usize> {
    let size = usize::try_from(page_size).ok()?;
    (size.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&size)).then_some(size)
}

impl<S: Source> Db<S> {
    /// Opens a database as bbolt does: the page size from meta 0 (4096 when meta 0 is
    /// damaged), then the valid meta with the higher transaction id.
    pub fn open(source: S) -> Result<Db<S>, ReadError> {
        let len = source.len();
        // bbolt reads 4 KiB here and calls a shorter file invalid; a database with
        // smaller pages can be shorter, so read what there is (meta 0 needs 80 bytes).
        let first_bytes = usize::try_from(len.min(FIRST_READ_BYTES as u64)).unwrap_or(0);
        if first_bytes < META_OFFSET + META_BYTES {
            return Err(ReadError::NoValidMeta {
                meta0: MetaError::Invalid,
                meta1: MetaError::Invalid,
            });
        }
        let mut first = vec![0u8; first_bytes];
        source.read_exact_at(&mut first, 0)?;
        let declared = read_u32(&first, META_OFFSET + META_PAGE_SIZE_OFFSET)
            .and_then(valid_page_size)
            .unwrap_or(PAGE_SIZE_DEFAULT);
        // The page size meta 0 declares counts only when meta 0 is otherwise valid.
        let page_size = match parse_meta(&first, len, declared) {
            Ok(_) => declared,
            Err(_) => PAGE_SIZE_DEFAULT,
        };
        if len < 2 * page_size as u64 {
            return Err(ReadError::FileTooSmall { len });
        }
        let mut pages = vec![0u8; 2 * page_size];
        source.read_exact_at(&mut pages, 0)?;
        let (page0, page1) = pages.split_at(page_size);
        let check_size = |meta: Meta| {
            if valid_page_size(meta.page_size) == Some(page_size) {
                Ok(meta)
            } else {
                Err(MetaError::PageSize(meta.page_size))
            }
        };
        let meta0 = parse_meta(page0, len, page_size).and_then(check_size);
        let meta1 = parse_meta(page1, len, page_size).and_then(check_size);
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(meta0), Err(meta1)) => return Err(ReadError::NoValidMeta { meta0, meta1 }),
        };
        Ok(Db {
            source,
            page_size,
            meta,
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The database's size as bbolt counts it (`tx.Size()`): pages in use × page size.
    pub fn size(&self) -> u64 {
        self.meta.high_water.saturating_mul(self.page_size as u64)
    }

    /// The root bucket (its entries are the top-level buckets).
    pub fn root(&self) -> BucketRef {
        BucketRef::Tree {
            root: self.meta.root,
        }
    }

    /// Reads page `pgid` with its overflow pages, checking that it lies below the high
    /// water mark and names itself.
    pub fn read_page(&self, pgid: u64) -> Result<Bytes, ReadError> {
        let high_water = self.meta.high_water;
        if pgid < 2 || pgid >= high_water {
            return Err(ReadError::damaged(pgid, Damage::OutOfBounds { high_water }));
        }
        // One read for the usual page; a second for its overflow pages, if any.
        let offset = pgid * self.page_size as u64;
        let mut page = vec![0u8; self.page_size];
        self.source.read_exact_at(&mut page, offset)?;
        let overflow = read_u32(&page, PAGE_OVERFLOW_OFFSET).unwrap_or_default();
        let pages = u64::from(overflow) + 1;
        if pgid + pages > high_water {
            return Err(ReadError::damaged(
                pgid,
                Damage::OverflowOutOfBounds {
                    overflow,
                    high_water,
                },
            ));
        }
        let found = read_u64(&page, PAGE_ID_OFFSET).unwrap_or_default();
        if found != pgid {
            return Err(ReadError::damaged(pgid, Damage::WrongId { found }));
        }
        if overflow > 0 {
            // Bounded by the high water mark, which is bounded by the source's length.
            let bytes = usize::try_from(pages * self.page_size as u64).map_err(|_| {
                ReadError::damaged(
                    pgid,
                    Damage::OverflowOutOfBounds {
                        overflow,
                        high_water,
                    },
                )
            })?;
            page.resize(bytes, 0);
            let rest = page.get_mut(self.page_size..).unwrap_or_default();
            self.source
                .read_exact_at(rest, offset + self.page_size as u64)?;
        }
        Ok(Bytes::from(page))
    }

    /// A cursor over every entry of `bucket`, in key order.
    pub fn cursor(&self, bucket: &BucketRef) -> Cursor<'_, S> {
        Cursor::new(self, bucket)
    }

    /// The nested bucket `name` of `parent`, if there is one (a plain key of that name
    /// is not a bucket, as in bbolt).
    pub fn bucket(&self, parent: &BucketRef, name: &[u8]) -> Result<Option<BucketRef>, ReadError> {
        let found = match parent {
            BucketRef::Inline { page } => find_in_leaf(page, name, 0)?,
            BucketRef::Tree { root } => {
                let mut pgid = *root;
                let mut depth = 0;
                loop {
                    depth += 1;
                    if depth > TREE_DEPTH_MAX {
                        return Err(ReadError::damaged(pgid, Damage::TooDeep));
                    }
                    let page = self.read_page(pgid)?;
                    match page_kind(&page).map_err(|d| ReadError::damaged(pgid, d))? {
                        Kind::Leaf => break find_in_leaf(&page, name, pgid)?,
                        Kind::Branch => {
                            let count = check_elements(&page, false)
                                .map_err(|d| ReadError::damaged(pgid, d))?;
                            // The last child whose first key is at most `name`.
                            let mut child = None;
                            for index in 0..count {
                                let (key, pgid) = branch_element(&page, index)
                                    .map_err(|d| ReadError::damaged(pgid, d))?;
                                if index == 0 || key.as_ref() <= name {
                                    child = Some(pgid);
                                } else {
                                    break;
                                }
                            }
                            pgid = child.ok_or(ReadError::damaged(pgid, Damage::EmptyBranch))?;
                        }
                    }
                }
            }
        };
        match found {
            Some(entry) if entry.is_bucket => {
                Ok(Some(BucketRef::from_value(&entry.value, entry.page)?.0))
            }
            _ => Ok(None),
        }
    }

    /// bbolt's `tx.Check`: every page below the high water mark is reachable exactly
    /// once or free, reachable pages are branches or leaves, nothing is freed twice.
    /// Returns bbolt's messages for what it finds (etcdctl prints them); an error only
    /// when the file cannot be walked at all.
    pub fn check(&self) -> Result<Vec<String>, ReadError> {
        let high_water = self.meta.high_water;
        let slots = usize::try_from(high_water).unwrap_or(usize::MAX);
        let mut problems = Vec::new();
        let mut freed = vec![false; slots];
        let freelist_synced = self.meta.freelist != NO_FREELIST;
        let mut reachable = vec![false; slots];
        let mark = |set: &mut Vec<bool>, pgid: u64| -> bool {
            match usize::try_from(pgid).ok().and_then(|i| set.get_mut(i)) {
                Some(slot) => !std::mem::replace(slot, true),
                None => true,
            }
        };
        for meta_page in [0, 1] {
            mark(&mut reachable, meta_page);
        }
        if freelist_synced {
            let page = self.read_page(self.meta.freelist)?;
            let ids = freelist_ids(&page).map_err(|d| ReadError::damaged(self.meta.freelist, d))?;
            for id in ids {
                if !mark(&mut freed, id) {
                    problems.push(format!("page {id}: already freed"));
                }
            }
            let overflow = read_u32(&page, PAGE_OVERFLOW_OFFSET).unwrap_or_default();
            for i in 0..=u64::from(overflow) {
                mark(&mut reachable, self.meta.freelist + i);
            }
        }
        // Buckets to walk: (tree root, nesting depth).
        let mut buckets = vec![(self.meta.root, 0usize)];
        while let Some((root, nesting)) = buckets.pop() {
            if nesting > TREE_DEPTH_MAX {
                return Err(ReadError::damaged(root, Damage::TooDeep));
            }
            let mut pages = vec![(root, 0usize)];
            let mut inline = Vec::new();
            while let Some((pgid, depth)) = pages.pop() {
                if depth > TREE_DEPTH_MAX {
                    return Err(ReadError::damaged(pgid, Damage::TooDeep));
                }
                if pgid >= high_water {
                    problems.push(format!("page {pgid}: out of bounds: {high_water}"));
                    continue;
                }
                let page = self.read_page(pgid)?;
                let overflow = read_u32(&page, PAGE_OVERFLOW_OFFSET).unwrap_or_default();
                let mut seen_before = false;
                for i in 0..=u64::from(overflow) {
                    if !mark(&mut reachable, pgid + i) {
                        problems.push(format!("page {}: multiple references", pgid + i));
                        seen_before = true;
                    }
                }
                if freed.get(usize::try_from(pgid).unwrap_or(usize::MAX)) == Some(&true) {
                    problems.push(format!("page {pgid}: reachable freed"));
                }
                let kind = match page_kind(&page) {
                    Ok(kind) => kind,
                    Err(_) => {
                        let flags = read_u16(&page, PAGE_FLAGS_OFFSET).unwrap_or_default();
                        problems.push(format!("page {pgid}: invalid type: {}", page_type(flags)));
                        continue;
                    }
                };
                if seen_before {
                    // Walking it again could loop.
                    continue;
                }
                let count = check_elements(&page, kind == Kind::Leaf)
                    .map_err(|d| ReadError::damaged(pgid, d))?;
                for index in 0..count {
                    match kind {
                        Kind::Branch => {
                            let (_, child) = branch_element(&page, index)
                                .map_err(|d| ReadError::damaged(pgid, d))?;
                            pages.push((child, depth + 1));
                        }
                        Kind::Leaf => {
                            let entry = leaf_element(&page, index, pgid)
                                .map_err(|d| ReadError::damaged(pgid, d))?;
                            if entry.is_bucket {
                                inline.push(entry);
                            }
                        }
                    }
                }
            }
            // Nested buckets: trees are walked like this one; inline ones hold no pages
            // but may hold further buckets only as trees... which bbolt never writes
            // (an inline bucket has no nested buckets), so their entries are checked for
            // shape only.
            for entry in inline {
                match BucketRef::from_value(&entry.value, entry.page)?.0 {
                    BucketRef::Tree { root } => buckets.push((root, nesting + 1)),
                    BucketRef::Inline { .. } => {}
                }
            }
        }
        if freelist_synced {
            for pgid in 0..high_water {
                let index = usize::try_from(pgid).unwrap_or(usize::MAX);
                let is_reachable = reachable.get(index) == Some(&true);
                let is_freed = freed.get(index) == Some(&true);
                if !is_reachable && !is_freed {
                    problems.push(format!("page {pgid}: unreachable unfreed"));
                }
            }
        }
        Ok(problems)
    }
}

/// bbolt's `page.typ()`.
fn page_type(flags: u16) -> String {
    if flags & PAGE_FLAG_BRANCH != 0 {
        "branch".into()
    } else if flags & PAGE_FLAG_LEAF != 0 {
        "leaf".into()
    } else if flags & super::format::PAGE_FLAG_META != 0 {
        "meta".into()
    } else if flags & PAGE_FLAG_FREELIST != 0 {
        "freelist".into()
    } else {
        format!("unknown<{flags:02x}>")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Branch,
    Leaf,
}

/// A tree page is a leaf when its leaf flag is set, else a branch when its branch flag
/// is (bbolt tests the bits the same way).
fn page_kind(page: &[u8]) -> Result<Kind, Damage> {
    let flags = read_u16(page, PAGE_FLAGS_OFFSET).ok_or(Damage::NotBranchOrLeaf { flags: 0 })?;
    if flags & PAGE_FLAG_LEAF != 0 {
        Ok(Kind::Leaf)
    } else if flags & PAGE_FLAG_BRANCH != 0 {
        Ok(Kind::Branch)
    } else {
        Err(Damage::NotBranchOrLeaf { flags })
    }
}

/// Checks that the element table and every element's data lie inside the page; returns
/// the element count.
fn check_elements(page: &Bytes, leaf: bool) -> Result<usize, Damage> {
    if leaf {
        let kind = page_kind(page)?;
        if kind != Kind::Leaf {
            let flags = read_u16(page, PAGE_FLAGS_OFFSET).unwrap_or_default();
            return Err(Damage::NotBranchOrLeaf { flags });
        }
    }
    let count = usize::from(read_u16(page, PAGE_COUNT_OFFSET).unwrap_or_default());
    let element_bytes = if leaf {
        LEAF_ELEMENT_BYTES
    } else {
        BRANCH_ELEMENT_BYTES
    };
    let table_end = count
        .checked_mul(element_bytes)
        .and_then(|t| t.checked_add(PAGE_HEADER_BYTES));
    if table_end.is_none_or(|end| end > page.len()) {
        return Err(Damage::ElementsOverflow {
            count,
            bytes: page.len(),
        });
    }
    if !leaf && count == 0 {
        return Err(Damage::EmptyBranch);
    }
    for index in 0..count {
        if leaf {
            leaf_element(page, index, 0)?;
        } else {
            branch_element(page, index)?;
        }
    }
    Ok(count)
}

/// Element `index` of a branch page: (first key of the child, child pgid).
fn branch_element(page: &Bytes, index: usize) -> Result<(Bytes, u64), Damage> {
    let out = || Damage::ElementOutOfPage { index };
    let element = index
        .checked_mul(BRANCH_ELEMENT_BYTES)
        .and_then(|o| o.checked_add(PAGE_HEADER_BYTES))
        .ok_or_else(out)?;
    let pos = read_u32(page, element + BRANCH_POS_OFFSET).ok_or_else(out)?;
    let ksize = read_u32(page, element + BRANCH_KSIZE_OFFSET).ok_or_else(out)?;
    let child = read_u64(page, element + BRANCH_CHILD_OFFSET).ok_or_else(out)?;
    let start = element.checked_add(pos as usize).ok_or_else(out)?;
    let end = start.checked_add(ksize as usize).ok_or_else(out)?;
    if end > page.len() {
        return Err(out());
    }
    Ok((page.slice(start..end), child))
}

/// Element `index` of a leaf page.
fn leaf_element(page: &Bytes, index: usize, pgid: u64) -> Result<Entry, Damage> {
    let out = || Damage::ElementOutOfPage { index };
    let element = index
        .checked_mul(LEAF_ELEMENT_BYTES)
        .and_then(|o| o.checked_add(PAGE_HEADER_BYTES))
        .ok_or_else(out)?;
    let flags = read_u32(page, element + LEAF_FLAGS_OFFSET).ok_or_else(out)?;
    let pos = read_u32(page, element + LEAF_POS_OFFSET).ok_or_else(out)?;
    let ksize = read_u32(page, element + LEAF_KSIZE_OFFSET).ok_or_else(out)?;
    let vsize = read_u32(page, element + LEAF_VSIZE_OFFSET).ok_or_else(out)?;
    let key_start = element.checked_add(pos as usize).ok_or_else(out)?;
    let key_end = key_start.checked_add(ksize as usize).ok_or_else(out)?;
    let value_end = key_end.checked_add(vsize as usize).ok_or_else(out)?;
    if value_end > page.len() {
        return Err(out());
    }
    Ok(Entry {
        key: page.slice(key_start..key_end),
        value: page.slice(key_end..value_end),
        is_bucket: flags & LEAF_FLAG_BUCKET != 0,
        page: pgid,
    })
}

fn find_in_leaf(page: &Bytes, name: &[u8], pgid: u64) -> Result<Option<Entry>, ReadError> {
    let count = check_elements(page, true).map_err(|d| ReadError::damaged(pgid, d))?;
    for index in 0..count {
        let entry = leaf_element(page, index, pgid).map_err(|d| ReadError::damaged(pgid, d))?;
        if entry.key.as_ref() == name {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// The page ids on a freelist page.
fn freelist_ids(page: &[u8]) -> Result<Vec<u64>, Damage> {
    let flags = read_u16(page, PAGE_FLAGS_OFFSET).unwrap_or_default();
    if flags & PAGE_FLAG_FREELIST == 0 {
        return Err(Damage::NotFreelist { flags });
    }
    let count = read_u16(page, PAGE_COUNT_OFFSET).unwrap_or_default();
    let (first, count) = if count == 0xFFFF {
        let real = read_u64(page, PAGE_HEADER_BYTES).unwrap_or_default();
        (1usize, usize::try_from(real).unwrap_or(usize::MAX))
    } else {
        (0, usize::from(count))
    };
    let fits = first
        .checked_add(count)
        .and_then(|n| n.checked_mul(8))
        .and_then(|n| n.checked_add(PAGE_HEADER_BYTES))
        .is_some_and(|end| end <= page.len());
    if !fits {
        return Err(Damage::ElementsOverflow {
            count,
            bytes: page.len(),
        });
    }
    Ok((first..first + count)
        .filter_map(|i| read_u64(page, PAGE_HEADER_BYTES + i * 8))
        .collect())
}

/// A page on a cursor's path.
struct Frame {
    page: Bytes,
    pgid: u64,
    kind: Kind,
    count: usize,
    next: usize,
}

/// Every entry of one bucket in key order, reading one page at a time. Stops at the
/// first error (and yields it once).
pub struct Cursor<'a, S> {
    db: &'a Db<S>,
    stack: Vec<Frame>,
    /// Pages already entered, so that a damaged tree cannot make the cursor loop.
    visited: Vec<u64>,
    last_key: Option<Bytes>,
    failed: bool,
    start: Option<BucketRef>,
}

impl<'a, S: Source> Cursor<'a, S> {
    fn new(db: &'a Db<S>, bucket: &BucketRef) -> Cursor<'a, S> {
        Cursor {
            db,
            stack: Vec::new(),
            visited: Vec::new(),
            last_key: None,
            failed: false,
            start: Some(bucket.clone()),
        }
    }

    fn enter(&mut self, pgid: u64) -> Result<(), ReadError> {
        if self.stack.len() >= TREE_DEPTH_MAX {
            return Err(ReadError::damaged(pgid, Damage::TooDeep));
        }
        if self.visited.is_empty() {
            let words = self.db.meta.high_water.div_ceil(64);
            self.visited = vec![0; usize::try_from(words).unwrap_or(0)];
        }
        let word = usize::try_from(pgid / 64).unwrap_or(usize::MAX);
        let bit = 1u64 << (pgid % 64);
        match self.visited.get_mut(word) {
            Some(slot) if *slot & bit != 0 => return Err(ReadError::damaged(pgid, Damage::Cycle)),
            Some(slot) => *slot |= bit,
            None => {
                let high_water = self.db.meta.high_water;
                return Err(ReadError::damaged(pgid, Damage::OutOfBounds { high_water }));
            }
        }
        let page = self.db.read_page(pgid)?;
        let kind = page_kind(&page).map_err(|d| ReadError::damaged(pgid, d))?;
        let count =
            check_elements(&page, kind == Kind::Leaf).map_err(|d| ReadError::damaged(pgid, d))?;
        self.stack.push(Frame {
            page,
            pgid,
            kind,
            count,
            next: 0,
        });
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Entry>, ReadError> {
        if let Some(start) = self.start.take() {
            match start {
                BucketRef::Tree { root } => self.enter(root)?,
                BucketRef::Inline { page } => {
                    let count = check_elements(&page, true)
                        .map_err(|d| ReadError::damaged(0, Damage::Inline(Box::new(d))))?;
                    self.stack.push(Frame {
                        page,
                        pgid: 0,
                        kind: Kind::Leaf,
                        count,
                        next: 0,
                    });
                }
            }
        }
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            if frame.next >= frame.count {
                self.stack.pop();
                continue;
            }
            let index = frame.next;
            frame.next += 1;
            let pgid = frame.pgid;
            match frame.kind {
                Kind::Branch => {
                    let (_, child) = branch_element(&frame.page, index)
                        .map_err(|d| ReadError::damaged(pgid, d))?;
                    self.enter(child)?;
                }
                Kind::Leaf => {
                    let entry = leaf_element(&frame.page, index, pgid)
                        .map_err(|d| ReadError::damaged(pgid, d))?;
                    if let Some(last) = &self.last_key {
                        if entry.key <= *last {
                            return Err(ReadError::damaged(pgid, Damage::KeysOutOfOrder { index }));
                        }
                    }
                    self.last_key = Some(entry.key.clone());
                    return Ok(Some(entry));
                }
            }
        }
    }
}

impl<S: Source> Iterator for Cursor<'_, S> {
    type Item = Result<Entry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
