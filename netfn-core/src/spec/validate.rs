//! Semantic checks (placeholder).
