//! Everything an allocation owns: its slot with a generation, its ports, its entry in the
//! timer wheel, its EVEN-PORT reservations. No outputs, no sockets.

pub mod allocation;
mod invariants;
pub mod ports;
pub mod slots;
pub mod timer_wheel;

pub use invariants::Footprint;
