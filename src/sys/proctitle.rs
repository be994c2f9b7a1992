//! Process titles: rewriting the argv area so `ps` shows a chosen title.
//! (Placeholder: filled in by the titles work.)

/// Claims the argv area; call once at start, before any thread exists.
pub fn init() {}

/// Sets the title shown by `ps`, and the short `comm` name.
pub fn set(_title: &str) {}
