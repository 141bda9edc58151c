//! plan (todo)
