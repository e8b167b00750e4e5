//! The bbolt layout as constants, each offset built from the previous one. The same
//! layout is drawn in `docs/format/bbolt.md`; the two must agree.

// ---------------------------------------------------------------------------------------
// Page header (16 bytes at the start of every page, little-endian).
// ---------------------------------------------------------------------------------------

/// The page's own number.
pub const PAGE_ID_OFFSET: usize = 0;
pub const PAGE_ID_SIZE: usize = 8;
/// `PAGE_FLAG_*`.
pub const PAGE_FLAGS_OFFSET: usize = PAGE_ID_OFFSET + PAGE_ID_SIZE;
pub const PAGE_FLAGS_SIZE: usize = 2;
/// Elements on a branch or leaf page, ids on a freelist page.
pub const PAGE_COUNT_OFFSET: usize = PAGE_FLAGS_OFFSET + PAGE_FLAGS_SIZE;
pub const PAGE_COUNT_SIZE: usize = 2;
/// Extra pages this page spans.
pub const PAGE_OVERFLOW_OFFSET: usize = PAGE_COUNT_OFFSET + PAGE_COUNT_SIZE;
pub const PAGE_OVERFLOW_SIZE: usize = 4;
pub const PAGE_HEADER_BYTES: usize = PAGE_OVERFLOW_OFFSET + PAGE_OVERFLOW_SIZE;
const _: () = assert!(PAGE_HEADER_BYTES == 16);

pub const PAGE_FLAG_BRANCH: u16 = 0x01;
pub const PAGE_FLAG_LEAF: u16 = 0x02;
pub const PAGE_FLAG_META: u16 = 0x04;
pub const PAGE_FLAG_FREELIST: u16 = 0x10;

/// A page's `count` is a u16; bbolt refuses to write a node with this many elements.
pub const PAGE_COUNT_MAX: usize = 0xFFFF;

// ---------------------------------------------------------------------------------------
// Meta (64 bytes right after the page header of pages 0 and 1).
// ---------------------------------------------------------------------------------------

pub const META_OFFSET: usize = PAGE_HEADER_BYTES;
pub const META_MAGIC_OFFSET: usize = 0;
pub const META_MAGIC_SIZE: usize = 4;
pub const META_VERSION_OFFSET: usize = META_MAGIC_OFFSET + META_MAGIC_SIZE;
pub const META_VERSION_SIZE: usize = 4;
pub const META_PAGE_SIZE_OFFSET: usize = META_VERSION_OFFSET + META_VERSION_SIZE;
pub const META_PAGE_SIZE_SIZE: usize = 4;
pub const META_FLAGS_OFFSET: usize = META_PAGE_SIZE_OFFSET + META_PAGE_SIZE_SIZE;
pub const META_FLAGS_SIZE: usize = 4;
/// The root bucket's header (root pgid, sequence).
pub const META_ROOT_OFFSET: usize = META_FLAGS_OFFSET + META_FLAGS_SIZE;
pub const META_ROOT_SIZE: usize = BUCKET_HEADER_BYTES;
pub const META_FREELIST_OFFSET: usize = META_ROOT_OFFSET + META_ROOT_SIZE;
pub const META_FREELIST_SIZE: usize = 8;
/// bbolt's `pgid`: pages in use.
pub const META_HIGH_WATER_OFFSET: usize = META_FREELIST_OFFSET + META_FREELIST_SIZE;
pub const META_HIGH_WATER_SIZE: usize = 8;
pub const META_TXID_OFFSET: usize = META_HIGH_WATER_OFFSET + META_HIGH_WATER_SIZE;
pub const META_TXID_SIZE: usize = 8;
/// FNV-1a 64 of the meta bytes before it.
pub const META_CHECKSUM_OFFSET: usize = META_TXID_OFFSET + META_TXID_SIZE;
pub const META_CHECKSUM_SIZE: usize = 8;
pub const META_BYTES: usize = META_CHECKSUM_OFFSET + META_CHECKSUM_SIZE;
const _: () = assert!(META_BYTES == 64);
const _: () = assert!(META_CHECKSUM_OFFSET == 56);

pub const META_MAGIC: u32 = 0xED0C_DAED;
pub const META_VERSION: u32 = 2;
/// The meta's `freelist` when the freelist is not stored (bbolt's `pgidNoFreelist`).
pub const NO_FREELIST: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------
// Branch and leaf elements (16 bytes each, right after the page header).
// ---------------------------------------------------------------------------------------

/// Distance from the element's start to its key.
pub const BRANCH_POS_OFFSET: usize = 0;
pub const BRANCH_POS_SIZE: usize = 4;
pub const BRANCH_KSIZE_OFFSET: usize = BRANCH_POS_OFFSET + BRANCH_POS_SIZE;
pub const BRANCH_KSIZE_SIZE: usize = 4;
pub const BRANCH_CHILD_OFFSET: usize = BRANCH_KSIZE_OFFSET + BRANCH_KSIZE_SIZE;
pub const BRANCH_CHILD_SIZE: usize = 8;
pub const BRANCH_ELEMENT_BYTES: usize = BRANCH_CHILD_OFFSET + BRANCH_CHILD_SIZE;
const _: () = assert!(BRANCH_ELEMENT_BYTES == 16);

/// `LEAF_FLAG_BUCKET` or 0.
pub const LEAF_FLAGS_OFFSET: usize = 0;
pub const LEAF_FLAGS_SIZE: usize = 4;
/// Distance from the element's start to its key (the value follows the key).
pub const LEAF_POS_OFFSET: usize = LEAF_FLAGS_OFFSET + LEAF_FLAGS_SIZE;
pub const LEAF_POS_SIZE: usize = 4;
pub const LEAF_KSIZE_OFFSET: usize = LEAF_POS_OFFSET + LEAF_POS_SIZE;
pub const LEAF_KSIZE_SIZE: usize = 4;
pub const LEAF_VSIZE_OFFSET: usize = LEAF_KSIZE_OFFSET + LEAF_KSIZE_SIZE;
pub const LEAF_VSIZE_SIZE: usize = 4;
pub const LEAF_ELEMENT_BYTES: usize = LEAF_VSIZE_OFFSET + LEAF_VSIZE_SIZE;
const _: () = assert!(LEAF_ELEMENT_BYTES == 16);

/// The leaf element's value is a nested bucket.
pub const LEAF_FLAG_BUCKET: u32 = 0x01;

// ---------------------------------------------------------------------------------------
// Bucket header (16 bytes at the start of a bucket's value; an inline page follows when
// the root is 0).
// ---------------------------------------------------------------------------------------

pub const BUCKET_ROOT_OFFSET: usize = 0;
pub const BUCKET_ROOT_SIZE: usize = 8;
pub const BUCKET_SEQUENCE_OFFSET: usize = BUCKET_ROOT_OFFSET + BUCKET_ROOT_SIZE;
pub const BUCKET_SEQUENCE_SIZE: usize = 8;
pub const BUCKET_HEADER_BYTES: usize = BUCKET_SEQUENCE_OFFSET + BUCKET_SEQUENCE_SIZE;
const _: () = assert!(BUCKET_HEADER_BYTES == 16);

// ---------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------

/// bbolt's `MaxKeySize`.
pub const KEY_BYTES_MAX: usize = 32_768;
/// bbolt's `MaxValueSize`.
pub const VALUE_BYTES_MAX: usize = (1 << 31) - 2;
/// Page sizes the reader accepts: bbolt uses the OS page size, 4 KiB on etcd's platforms
/// and 64 KiB on some ppc64/arm64 kernels; anything else is damage.
pub const PAGE_SIZE_MIN: usize = 1024;
pub const PAGE_SIZE_MAX: usize = 64 * 1024;
/// The page size rivet writes (what etcd on x86-64 and most arm64 Linux writes).
pub const PAGE_SIZE_DEFAULT: usize = 4096;
/// The meta page size bbolt reads first to learn the page size.
pub const FIRST_READ_BYTES: usize = 4096;
/// Deepest tree (and bucket nesting) the reader follows. A bbolt tree of 2^64 pages
/// with at least two elements per branch is at most 64 levels deep; deeper means a cycle.
pub const TREE_DEPTH_MAX: usize = 64;
/// A bucket is written inline when its single leaf is at most this share of a page
/// (bbolt's `maxInlineBucketSize` = page size / 4).
pub const INLINE_BUCKET_DIVISOR: usize = 4;

// ---------------------------------------------------------------------------------------
// Little-endian field access that cannot panic.
// ---------------------------------------------------------------------------------------

pub fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let field = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(field.try_into().ok()?))
}

pub fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

pub fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// Writes `value` at `offset`; the caller sized `bytes` to hold the field.
pub fn write_u16(bytes: &mut [u8], offset: usize, value: u16) {
    if let Some(field) = bytes.get_mut(offset..offset + 2) {
        field.copy_from_slice(&value.to_le_bytes());
    } else {
        debug_assert!(false, "u16 field at {offset} outside {} bytes", bytes.len());
    }
}

pub fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    if let Some(field) = bytes.get_mut(offset..offset + 4) {
        field.copy_from_slice(&value.to_le_bytes());
    } else {
        debug_assert!(false, "u32 field at {offset} outside {} bytes", bytes.len());
    }
}

pub fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    if let Some(field) = bytes.get_mut(offset..offset + 8) {
        field.copy_from_slice(&value.to_le_bytes());
    } else {
        debug_assert!(false, "u64 field at {offset} outside {} bytes", bytes.len());
    }
}

/// FNV-1a 64, the meta checksum.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// A meta as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    pub high_water: u64,
    pub txid: u64,
}

impl Meta {
    /// The 64 meta bytes with their checksum.
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut bytes = [0u8; META_BYTES];
        write_u32(&mut bytes, META_MAGIC_OFFSET, META_MAGIC);
        write_u32(&mut bytes, META_VERSION_OFFSET, META_VERSION);
        write_u32(&mut bytes, META_PAGE_SIZE_OFFSET, self.page_size);
        write_u32(&mut bytes, META_FLAGS_OFFSET, self.flags);
        write_u64(&mut bytes, META_ROOT_OFFSET + BUCKET_ROOT_OFFSET, self.root);
        write_u64(
            &mut bytes,
            META_ROOT_OFFSET + BUCKET_SEQUENCE_OFFSET,
            self.root_sequence,
        );
        write_u64(&mut bytes, META_FREELIST_OFFSET, self.freelist);
        write_u64(&mut bytes, META_HIGH_WATER_OFFSET, self.high_water);
        write_u64(&mut bytes, META_TXID_OFFSET, self.txid);
        let checksum = fnv1a_64(bytes.get(..META_CHECKSUM_OFFSET).unwrap_or_default());
        write_u64(&mut bytes, META_CHECKSUM_OFFSET, checksum);
        bytes
    }
}
