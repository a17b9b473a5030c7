//! The job types sluice ships. Each is a parameter schema plus a flow of components.

pub mod fire_tweets;
mod wordcount;

pub use fire_tweets::FireTweets;
pub use wordcount::Wordcount;
