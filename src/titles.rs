//! Process titles as `ps` and `top` show them.
