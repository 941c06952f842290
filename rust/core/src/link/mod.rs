//! Everything that arrives on a detector link: PicoQuant TTTR records (`tttr`), the
//! opsims live-link framing around them (`frame`), and recorded `.ptu` files (`ptu`).
//! The record layouts are written down in `docs/detector-link.md`. `potentiostat` is the
//! other instrument's link (`docs/potentiostat-link.md`).

pub mod encode;
pub mod frame;
pub mod potentiostat;
pub mod ptu;
pub mod stream;
pub mod tttr;
