//! PicoQuant `.ptu` files. INTERFACE STUB — bodies to be written.
