//! Support code for rookery's queue examples, shared by the examples, the
//! integration tests and the bench: a small blocking [Beanstalkd
//! client](beanstalk). Not published, and not part of the `rookery`
//! library: a daemon author picks their own queue client.

pub mod beanstalk;
