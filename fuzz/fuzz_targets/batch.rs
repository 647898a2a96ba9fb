//! The batch decoder and validator: any bytes as a batch archive, checked with the server's
//! rules. Refusing is fine; panicking, or accepting a batch that breaks a rule, is a bug.
#![no_main]

use faccia_fuzz::{aligned, check_accepted_batch, rules, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let archive = aligned(data);
    let rules = rules();
    match wire::BatchView::validate(&archive, &rules) {
        Ok(view) => check_accepted_batch(&view, &rules),
        Err(rejection) => assert!(!rejection.message.is_empty()),
    }
});
