//! The checkpoint: the commit point of a Parquet flush.
//!
//! `DATA_DIR/checkpoint` holds the flush watermark — every log record with an LSN at or below it
//! is in durable Parquet — and a snapshot of every terminal's stored-sequence window covering at
//! least those records. A flush is committed when the checkpoint naming its last LSN is durable;
//! only then may log segments below it be removed. Written atomically (temporary file, fsync,
//! rename, directory fsync).
//!
//! Layout, little-endian:
//!
//! ```text
//! magic "FCCKPT\0\0" | u32 version | u32 terminal count | u64 watermark
//! terminal count × (u32 terminal, u64 high, 16 × u64 window bits)
//! u32 CRC32C of everything before it
//! ```

use std::io;
use std::path::Path;

use crate::model::TerminalId;
use crate::storage::dedup::SeqWindow;

const MAGIC: [u8; 8] = *b"FCCKPT\0\0";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;
const WORDS: usize = std::mem::size_of::<[u64; 16]>() / 8;
const ENTRY_BYTES: usize = 4 + 8 + WORDS * 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading the checkpoint {path}")]
    Io { path: String, source: io::Error },
    #[error(
        "the checkpoint {path} is damaged ({reason}); faccia cannot tell which logged votes are \
         already in Parquet. Restore it from a backup, or move it away to rebuild the dataset \
         from scratch"
    )]
    Damaged { path: String, reason: String },
}

/// What a committed flush leaves behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every log record with an LSN at or below this is in durable Parquet.
    pub(crate) watermark: u64,
    pub(crate) windows: Vec<(TerminalId, SeqWindow)>,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.windows.len() * ENTRY_BYTES + 4);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(self.windows.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.watermark.to_le_bytes());
        for (terminal, window) in &self.windows {
            bytes.extend_from_slice(&terminal.to_le_bytes());
            bytes.extend_from_slice(&window.high.to_le_bytes());
            for word in window.bits {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// # Errors
    /// A description of the first inconsistency found.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() < HEADER_BYTES + 4 {
            return Err(format!("{} bytes is shorter than a header", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("checksum mismatch".into());
        }
        if body[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!("format version {version}; this faccia reads {VERSION}"));
        }
        let count = u32_at(12) as usize;
        if body.len() != HEADER_BYTES + count * ENTRY_BYTES {
            return Err(format!("{} bytes do not hold {count} terminals", body.len()));
        }
        let windows = (0..count)
            .map(|i| {
                let at = HEADER_BYTES + i * ENTRY_BYTES;
                let mut window = SeqWindow { high: u64_at(at + 4), ..SeqWindow::default() };
                for (w, word) in window.bits.iter_mut().enumerate() {
                    *word = u64_at(at + 12 + w * 8);
                }
                (u32_at(at), window)
            })
            .collect();
        Ok(Checkpoint { watermark: u64_at(16), windows })
    }

    /// Reads the checkpoint of a data directory; a missing one is the empty checkpoint.
    ///
    /// # Errors
    /// I/O errors, or a damaged file (which is never silently ignored: it would double votes).
    pub(crate) fn read(data_dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = data_dir.join("checkpoint");
        let display = path.display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => Checkpoint::decode(&bytes).map_err(|reason| CheckpointError::Damaged { path: display, reason }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(source) => Err(CheckpointError::Io { path: display, source }),
        }
    }

    /// Makes this checkpoint the data directory's, atomically and durably.
    ///
    /// # Errors
    /// I/O errors; the previous checkpoint then stays in force.
    pub(crate) fn write(&self, data_dir: &Path) -> io::Result<()> {
        crate::fsutil::write_atomic(&data_dir.join("checkpoint"), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut window = SeqWindow::default();
        for seq in [1, 2, 5, 900] {
            window.insert(seq);
        }
        Checkpoint { watermark: 12345, windows: vec![(3, window), (8, SeqWindow::default())] }
    }

    #[test]
    fn round_trip() {
        let checkpoint = sample();
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        assert_eq!(Checkpoint::decode(&Checkpoint::default().encode()), Ok(Checkpoint::default()));
    }

    #[test]
    fn every_damaged_byte_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(Checkpoint::decode(&damaged).is_err(), "flipped byte {i}");
        }
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn read_write_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), Checkpoint::default());
        sample().write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), sample());
        std::fs::write(dir.path().join("checkpoint"), b"garbage garbage garbage garbage").unwrap();
        let error = Checkpoint::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("damaged"), "{error}");
    }
}
