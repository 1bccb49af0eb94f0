//! The headers of a consumed record with their names as bytes.
//!
//! rdkafka's `Headers::get` / `try_get` turn each name into `&str` with `unwrap()`, so one
//! record whose header name is not UTF-8 (any Kafka producer may write one) panics the task
//! that reads it: a fan-out consumer, the retained reader. librdkafka itself hands names
//! out as C strings; reading them here, through the same two calls rdkafka makes, lets the
//! record format refuse such a record instead. This is the only `unsafe` in the proxy.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};

use rdkafka::bindings::{
    rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_headers_t, rd_kafka_message_headers, rd_kafka_resp_err_t,
};
use rdkafka::message::BorrowedMessage;

/// Every header of `record` in order: (name, value), the value `None` for a null value.
/// The slices borrow the record (librdkafka frees them with the message).
pub fn raw_headers<'a>(record: &'a BorrowedMessage<'_>) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
    let mut headers: *mut rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `record.ptr()` is the live librdkafka message `record` owns; the call only
    // stores a pointer to the message's own header list (or leaves it null).
    let found = unsafe { rd_kafka_message_headers(record.ptr(), &mut headers) };
    if found != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is the message's header list, valid while the message lives.
    let count = unsafe { rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `index < count`; the out-pointers are valid locals.
        let got = unsafe { rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size) };
        if got != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka stores each name NUL-terminated and each value as `size`
        // bytes, both inside the header list, which lives as long as the message that
        // `'a` borrows.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        out.push((name, value));
    }
    out
}
