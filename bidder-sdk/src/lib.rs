//! bidder sdk
