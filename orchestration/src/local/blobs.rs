//! FileBlobs: TODO (helper)
pub struct FileBlobs;
