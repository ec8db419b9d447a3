fn main() {
    fuse_ema::signals::install();
    fuse_ema::runtime::exit(fuse_ema::cli::run());
}
