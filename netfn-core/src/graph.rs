//! graph (todo)
