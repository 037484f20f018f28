//! Shared bits of the example programs. The programs are in `src/bin/`: `kubetail` tails an
//! app's merged logs with `kubelens-core` alone.
