//! The bot: join, renew, and write outputs (destination dirs) as tbot does.

pub mod output;
