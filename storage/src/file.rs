//! File I/O behind a small type: positioned writes and reads, sync, and the
//! crash-safe "write temp, fsync, rename, fsync directory" protocol.
//!
//! Format code never touches files; volume code never calls `std::fs`
//! directly for data it must not lose.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An open file that remembers its path for error messages.
#[derive(Debug)]
pub(crate) struct VolumeFile {
    file: File,
    path: PathBuf,
}

impl VolumeFile {
    /// Opens an existing file for reading and writing.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(VolumeFile {
            file,
            path: path.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Writes all of `buf` at `offset` (pwrite: no shared cursor, so writers
    /// of disjoint ranges do not serialise on the file).
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Current length of the file.
    pub(crate) fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len())
    }

    /// Truncates (or extends) the file to `len` bytes and syncs the change.
    pub(crate) fn truncate(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Asks the kernel to start writing `len` bytes at `offset` back to the
    /// disk now, without waiting for them (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`). A hint only: it makes nothing durable, the
    /// fsync that follows still does; it lets the disk work while more bytes
    /// arrive, so that fsync finds little left to write. A failure here is
    /// ignored for the same reason (the fsync reports it).
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return;
            };
            // SAFETY: plain syscall on a file descriptor this struct owns;
            // it reads no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    /// fdatasync: file contents and the size needed to read them back.
    pub(crate) fn sync_data(&self) -> Result<()> {
        crate::failpoint::fail_at("fsync")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// How a file will be read, told to the kernel (`posix_fadvise`), which
/// sizes its readahead by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads of whole records at random places: no readahead, so a read
    /// of a record fetches the record's pages and no more (one device read
    /// of about the blob's size, as in Haystack).
    Random,
    /// Reads front to back (compaction, tier moves, scrub): a large
    /// readahead window.
    Sequential,
}

/// Opens `path` read-only with its own file description, so that the
/// advice given here holds for reads through it alone (the kernel keeps
/// readahead state per open file, not per inode: the data file's
/// descriptor and its map keep the default).
pub fn open_for(path: &Path, access: Access) -> Result<File> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    advise(&file, access);
    Ok(file)
}

/// Tells the kernel how `file` will be read. A hint: a failure is ignored
/// (reads work the same, only their readahead differs).
pub fn advise(file: &File, access: Access) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let advice = match access {
            Access::Random => libc::POSIX_FADV_RANDOM,
            Access::Sequential => libc::POSIX_FADV_SEQUENTIAL,
        };
        // SAFETY: plain syscall on a descriptor `file` owns; it reads no
        // memory of ours.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, access);
}

/// Reads exactly `len` bytes at `offset` into a new buffer, without
/// zeroing it first (`vec![0; len]` then `read_exact_at` spent a twentieth
/// of a read from disk's CPU on the memset).
pub(crate) fn read_to_vec(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let at = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        let left = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..left];
        // SAFETY: `spare` is writable memory owned by `buf`, `spare.len()`
        // bytes long; pread writes at most that many bytes into it (and
        // reads none of it), on a descriptor `file` owns.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                spare.len(),
                at,
            )
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            // SAFETY: pread returned `n` > 0: it initialised the first `n`
            // bytes of the spare capacity, and `n <= spare.len()`.
            n => unsafe { buf.set_len(buf.len() + n as usize) },
        }
    }
    Ok(buf)
}

/// [`read_to_vec`] if every byte is in the page cache now, with no wait
/// for the disk (`preadv2` with `RWF_NOWAIT`): `None` if some is not (or
/// the kernel cannot say), and the caller reads it on a blocking thread.
/// Lets an async caller serve cached bytes inline, without handing the
/// read to another thread.
#[cfg(target_os = "linux")]
pub(crate) fn read_cached_to_vec(
    file: &File,
    len: usize,
    offset: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::with_capacity(len);
    let at = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    let spare = &mut buf.spare_capacity_mut()[..len];
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: spare.len(),
    };
    // SAFETY: `iov` points at `spare`: writable memory owned by `buf`,
    // `spare.len()` bytes long; preadv2 writes at most that many bytes into
    // it (and reads none of it), on a descriptor `file` owns.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
    if n < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            // Not cached, or RWF_NOWAIT not supported here.
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EINTR) => {
                Ok(None)
            }
            _ => Err(error),
        };
    }
    if n as usize != len {
        // Partly cached (or the end of the file): read it all the slow way.
        return Ok(None);
    }
    // SAFETY: preadv2 returned `len`: it initialised the first `len` bytes
    // of the spare capacity.
    unsafe { buf.set_len(len) };
    Ok(Some(buf))
}

/// Elsewhere: never known to be cached.
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_cached_to_vec(
    _file: &File,
    _len: usize,
    _offset: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    Ok(None)
}

/// Writes `contents` to `path` so that after a crash the file holds either
/// the old contents or the new, never a mix:
///
/// 1. write everything to `path.tmp`;
/// 2. fsync the temp file, so its bytes are on disk before its name is;
/// 3. rename it over `path` (atomic on POSIX file systems);
/// 4. fsync the directory, so the rename itself is durable.
///
/// A failure at any step removes the temp file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(contents).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temp name used while `path` is being written.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// fsyncs the directory holding `path`, making creations and renames in it durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn available_space(path: &Path) -> Result<u64> {
    disk_space(path).map(|(free, _)| free)
}

/// Bytes available to unprivileged users on the file system holding
/// `path`, and its size.
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::io(path, e.into()))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between targets
    let (avail, blocks, frsize) = (
        stat.f_bavail as u64,
        stat.f_blocks as u64,
        stat.f_frsize as u64,
    );
    Ok((avail * frsize, blocks * frsize))
}
