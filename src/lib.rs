//! Root package: it owns the demo group example and the end-to-end tests.
