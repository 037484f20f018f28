//! KubeLens storage backends implementing the `kubelens-core` storage traits.
#![deny(missing_docs)]
