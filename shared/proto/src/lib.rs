//! Generated gRPC contracts of every Boardroom service (prost messages, tonic clients and
//! servers), and the encoded file descriptor set that server reflection serves.

/// The encoded `FileDescriptorSet` of every Boardroom proto (for tonic-reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/boardroom_descriptor.bin"));

/// `boardroom.session.v1`: boardrooms, sessions and threads.
pub mod session {
    /// Version 1 of the session contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("boardroom.session.v1");
    }
}

/// `boardroom.cache.v1`: the tiered cache as a service.
pub mod cache {
    /// Version 1 of the cache contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("boardroom.cache.v1");
    }
}

/// `boardroom.llm.v1`: the LLM gateway.
pub mod llm {
    /// Version 1 of the LLM gateway contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("boardroom.llm.v1");
    }
}

/// `boardroom.conversation.v1`: messages, workflow state and turns.
pub mod conversation {
    /// Version 1 of the conversation contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("boardroom.conversation.v1");
    }
}
