//! InvocationLog: TODO
pub struct InvocationLog;
pub struct InvocationRecord;
